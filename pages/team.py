"""Team: double review, agreement between annotators, disagreements to adjudicate, activity.

The rules live in `hitl.team`; this page reads them and writes the adjudicator's
rulings (verdicts with the role ``adjudication``; the reviewers' own stay in the log).
"""

from __future__ import annotations

import streamlit as st

from db.records import VERDICTS
from hitl.team import (
    activity,
    adjudicate,
    agreement,
    disagreements,
    double_review_share,
    judgement_table,
    set_double_review_share,
)
from pages import session

MAX_DISPUTES = 10  # shown at once: each ruling makes room for the next


def share_ui(store) -> None:
    share = double_review_share(store)
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    chosen = c1.slider("Share of links reviewed twice, blind", 0.0, 1.0, share, 0.05,
                       key="team_share", help="Drawn once per link when it is first shown; "
                                              "0 turns double review off for new links")
    if c2.button("Save", key="team_share_save", disabled=chosen == share):
        set_double_review_share(store, chosen)
        st.rerun()


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def agreement_ui(store) -> None:
    found = agreement(judgement_table(store.reviewer_verdicts()))
    st.subheader("Agreement")
    if not found.pairs:
        st.text("No link has been judged by two annotators yet.")
        return
    c1, c2 = st.columns(2)
    c1.metric("Krippendorff's α (all annotators)", _number(found.alpha),
              help="Nominal α on links judged by two or more: 1 perfect, 0 chance, < 0 worse")
    c2.metric("Links judged by two or more", found.n_links)
    # a plain table (one row per pair, few rows): its figures are text a screen reader reads
    st.table([{"annotator A": p.annotator_a, "annotator B": p.annotator_b,
               "links both judged": p.n_links, "agreed": p.agreed,
               "Cohen's κ": _number(p.kappa)} for p in found.pairs])


def disputes_ui(store, model: str, annotator: str) -> None:
    found = disagreements(store, model)
    st.subheader(f"Disagreements to adjudicate ({len(found)})")
    if not found:
        st.text("None: every double-reviewed link is agreed or ruled on.")
        return
    for item in found[:MAX_DISPUTES]:
        link = item.link
        with st.container(border=True):
            a, b, words = st.columns([2, 2, 3])
            with a:
                session.show_image(store.get_image(link.image_a), (link.box_a,), side=240)
            with b:
                session.show_image(store.get_image(link.image_b), (link.box_b,), side=240)
            with words:
                st.text(f"Link #{link.link_id}   score {link.score:.3f}\n"
                        + "\n".join(f"{v.annotator}: {v.verdict}" + (f" ({v.note})" if v.note else "")
                                    for v in item.verdicts))
                for col, verdict in zip(st.columns(len(VERDICTS)), VERDICTS):
                    col.button(f"Rule: {verdict}", key=f"adjudicate_{verdict}_{link.link_id}",
                               on_click=adjudicate, args=(store, link.link_id, verdict, annotator))


def activity_ui(store) -> None:
    st.subheader("Activity (verdicts per annotator per day, UTC)")
    rows = activity(store.list_verdicts())
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch", key="team_activity")
    else:
        st.text("No verdicts yet.")


store = session.store()
annotator = session.require_annotator()
model = session.model_id(store)
st.title("Team")
share_ui(store)
agreement_ui(store)
disputes_ui(store, model, annotator)
activity_ui(store)
