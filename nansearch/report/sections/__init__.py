"""The sections of ``report.html``: each a function of the study's files that returns the
data its template shows (or None when the study has nothing for it). The markup lives in
the templates (``templates/sections/<name>.html``); charts are inline SVG from
:mod:`nansearch.report.charts`; :mod:`nansearch.report.page` reads the study and puts the
page together. A new section goes in the module of its kind, its template beside the
others:

- ``actions``: the conclusions with their fixes, the runs at risk
- ``reruns``: the rerun diagnoses
- ``ranking``: the ranking, the rates per level, importance, interactions, minimal causes
- ``trials``: pairs of factors, the first bad step, the top failures' curves, the trials
- ``inputs``: the audit and the configuration
- ``_base``: :class:`Section` and the formats every section shares
"""

from nansearch.report.sections._base import (
    Section,
    fmt,
    fmt_p,
    fmt_rate,
    is_nan,
    leveler,
    number,
    trial_links,
)
from nansearch.report.sections.actions import (
    at_risk_section,
    conclusions_section,
    ignored_section,
)
from nansearch.report.sections.inputs import audit_section, config_section
from nansearch.report.sections.ranking import (
    importance_section,
    interactions_section,
    minimal_causes_section,
    ranking_section,
    rates_section,
)
from nansearch.report.sections.reruns import rerun_card, reruns_section
from nansearch.report.sections.trials import (
    STEP_KEYS,
    curves_section,
    first_bad_step_section,
    pairs_section,
    trials_section,
)

__all__ = [
    "STEP_KEYS",
    "Section",
    "at_risk_section",
    "audit_section",
    "conclusions_section",
    "config_section",
    "curves_section",
    "first_bad_step_section",
    "fmt",
    "fmt_p",
    "fmt_rate",
    "ignored_section",
    "importance_section",
    "interactions_section",
    "is_nan",
    "leveler",
    "minimal_causes_section",
    "number",
    "pairs_section",
    "ranking_section",
    "rates_section",
    "rerun_card",
    "reruns_section",
    "trial_links",
    "trials_section",
]
