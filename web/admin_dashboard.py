"""Admin: the dashboard, the admin's home page (shared.services.dashboard computes every figure)."""

from __future__ import annotations

from typing import Any

from flask import render_template
from flask.typing import ResponseReturnValue

from shared.domain.money import exponent
from shared.domain.states import AttemptStatus
from shared.services.dashboard import OUTCOME_DAYS, Dashboard, build_dashboard
from web.admin import bp
from web.pages import login_required_admin
from web.services import session_scope


def outcomes_chart(board: Dashboard) -> dict[str, Any]:
    return {
        "kind": "stacked-bar",
        "label_heading": "Day",
        "labels": board.outcome_days,
        "series": [
            {"name": AttemptStatus(status).label, "values": values, "tone": status}
            for status, values in board.outcomes.items()
        ],
    }


def declines_chart(board: Dashboard) -> dict[str, Any]:
    return {
        "kind": "horizontal-bar",
        "label_heading": "Decline reason",
        "labels": [reason.replace("_", " ") for reason, _ in board.declines],
        "series": [{"name": "Declined charges", "values": [n for _, n in board.declines]}],
    }


def collected_chart(board: Dashboard, currency: str) -> dict[str, Any]:
    return {
        "kind": "bar",
        "label_heading": "Period",
        "labels": ["Today", "This week", "This month"],
        "series": [
            {
                "name": f"Collected ({currency.upper()})",
                "values": [board.collected[p].get(currency, 0) for p in ("today", "week", "month")],
                "tone": "succeeded",
            }
        ],
        "money": {"currency": currency.upper(), "exponent": exponent(currency)},
    }


@bp.get("/")
@login_required_admin
def home() -> ResponseReturnValue:
    with session_scope() as db:
        board = build_dashboard(db)
    return render_template(
        "admin/dashboard.html",
        board=board,
        outcomes=outcomes_chart(board),
        declines=declines_chart(board),
        collected={c: collected_chart(board, c) for c in board.currencies},
        outcome_days=OUTCOME_DAYS,
    )
