// The invoice page's refunds: while one is pending, ask for it every second and reload the page once
// Stripe's word changed it (the ledger and the amount due change with it). No inline script (CSP).
"use strict";
(function () {
  const rows = Array.from(document.querySelectorAll("tr[data-refund-status='pending'], tr[data-refund-status='requires_action']"));
  if (!rows.length) return;
  async function look() {
    for (const row of rows) {
      try {
        const answer = await fetch(row.dataset.statusUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" });
        if (!answer.ok) continue;
        const refund = await answer.json();
        if (refund.status !== row.dataset.refundStatus) {
          window.location.reload();
          return;
        }
      } catch (e) { /* the network blinked: next time */ }
    }
    setTimeout(look, 1000);
  }
  setTimeout(look, 1000);
})();
