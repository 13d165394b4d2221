// Live charge status for the admin invoice page and the Client Zone. No inline script (CSP).
"use strict";

const FINAL = new Set(["succeeded", "failed", "canceled", "requires_action"]);

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

function showStatus(box, body) {
  const charge = body.charge || body;
  box.dataset.status = charge.status;
  box.dataset.chargeId = charge.id;
  box.replaceChildren();
  box.append("Latest charge: ");
  const word = document.createElement("strong");
  word.className = `status-word status-${charge.status}`;
  word.textContent = charge.status_label;
  box.append(word, ` ${charge.amount_display}`);
  if (charge.failure_message && charge.status !== "succeeded" && charge.status !== "processing" && charge.status !== "queued") {
    const reason = document.createElement("span");
    reason.className = "reason";
    reason.textContent = charge.failure_message;
    box.append(" — ", reason);
  }
  if (body.invoice) {
    const badge = document.getElementById("invoice-status");
    if (badge) {
      badge.textContent = body.invoice.status_label;
      badge.className = `badge badge-${body.invoice.status}`;
    }
    const paid = document.getElementById("amount-paid");
    const due = document.getElementById("amount-due");
    if (paid) paid.textContent = body.invoice.amount_paid;
    if (due) due.textContent = body.invoice.amount_due;
  }
}

function poll(box, urlTemplate) {
  const id = box.dataset.chargeId;
  if (!id || FINAL.has(box.dataset.status)) return;
  fetch(urlTemplate.replace("CHARGE_ID", id), { headers: { Accept: "application/json" } })
    .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
    .then((body) => {
      showStatus(box, body);
      if (!FINAL.has(box.dataset.status)) setTimeout(() => poll(box, urlTemplate), 500);
      else if (box.dataset.status !== "succeeded") {
        const button = document.getElementById("charge-button");
        if (button && box.dataset.status !== "requires_action") button.disabled = false;
      }
    })
    .catch(() => setTimeout(() => poll(box, urlTemplate), 2000));
}

function wireChargeForm(form) {
  const box = document.getElementById("charge-status");
  const url = form.dataset.statusUrl;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const button = document.getElementById("charge-button");
    if (button) button.disabled = true;
    fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      headers: { Accept: "application/json", "X-CSRF-Token": csrfToken() },
    })
      .then((r) => r.json().then((body) => ({ status: r.status, body })))
      .then(({ status, body }) => {
        if (status === 202) {
          showStatus(box, body);
          setTimeout(() => poll(box, url), 300);
        } else {
          box.textContent = body.message || "The charge was refused.";
          box.dataset.status = "refused";
          if (button) button.disabled = false;
        }
      })
      .catch(() => {
        box.textContent = "Could not reach the server; nothing was charged. Try again.";
        if (button) button.disabled = false;
      });
  });
  if (box && box.dataset.chargeId) poll(box, url);
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("charge-form");
  if (form) wireChargeForm(form);
  const watched = document.querySelector("[data-watch-url]");
  if (watched) poll(watched, watched.dataset.watchUrl);
});

// Batch runs: follow each unfinished run's progress.
function followBatch(card) {
  fetch(card.dataset.batchUrl, { headers: { Accept: "application/json" } })
    .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
    .then((run) => {
      card.querySelector("progress").value = run.settled;
      card.querySelector(".settled").textContent = run.settled;
      card.querySelectorAll("[data-status]").forEach((el) => {
        const status = el.dataset.status;
        el.textContent = `${el.textContent.split(":")[0]}: ${run.outcomes[status] || 0}`;
      });
      if (run.settled < run.queued || !run.selection_finished) setTimeout(() => followBatch(card), 1000);
    })
    .catch(() => setTimeout(() => followBatch(card), 3000));
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("article.batch").forEach((card) => {
    const progress = card.querySelector("progress");
    if (Number(progress.value) < Number(card.dataset.queued)) followBatch(card);
  });
});
