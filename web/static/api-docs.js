// The admin's API documentation page: Swagger UI (vendored, web/static/vendor/swagger-ui/) draws the
// OpenAPI document named by #api-docs's data-spec-url. A file of its own, not an inline script (CSP).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("api-docs");
  if (!root) return;
  if (typeof window.SwaggerUIBundle !== "function") {
    root.textContent = "The API description viewer did not load; the OpenAPI document is linked above.";
    return;
  }
  window.SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    // The base layout without the standalone preset: its top bar injects an inline <style>.
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    // Never read ?url= or ?configUrl= from the address: this page shows our document and no other.
    queryConfigEnabled: false,
    // No badge fetched from validator.swagger.io (and the CSP would refuse the image anyway).
    validatorUrl: "none",
    defaultModelsExpandDepth: 0,
    docExpansion: "list",
  });
});
