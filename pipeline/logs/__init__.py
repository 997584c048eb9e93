"""Logs: masking rules and the online template miner that makes stored logs small and searchable.

``masking`` decides which tokens are variables; ``templates`` learns templates and turns each line
into a template id plus parameters, losslessly.
"""

from pipeline.logs.masking import DEFAULT_MASKING_RULES, MaskingRule, load_masking_rules
from pipeline.logs.templates import UNPARSED_TEMPLATE_ID, Match, MinerConfig, TemplateMiner

__all__ = [
    "DEFAULT_MASKING_RULES",
    "UNPARSED_TEMPLATE_ID",
    "Match",
    "MaskingRule",
    "MinerConfig",
    "TemplateMiner",
    "load_masking_rules",
]
