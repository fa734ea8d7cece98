"""The rows of `reaseq ablate`: each is the base DIN plus a few ModelConfig fields.

Kept apart from reaseq.ablate (which pulls in polars and the pipeline) so the CLI can list the rows in its help
without importing the training code.
"""

from __future__ import annotations

from typing import Any

RER_FIELDS: dict[str, Any] = {"knowledge": "aligned", "semantic_ids": True}
GBR_FIELDS: dict[str, Any] = {"inferred": True}
# GBR as one feature of the target (was it inferred, with what confidence), without the second attention
GBR_HIT_FIELDS: dict[str, Any] = {"inferred": True, "inferred_attention": False, "inferred_target_indicator": True}

# Row name -> ModelConfig fields on top of the base DIN.
ABLATION_ROWS: dict[str, dict[str, Any]] = {
    "din": {},
    "din_rer": RER_FIELDS,
    "din_gbr": GBR_FIELDS,
    "din_gbr_hit": GBR_HIT_FIELDS,
    "reaseq": {**RER_FIELDS, **GBR_FIELDS},
    "reaseq_hit": {**RER_FIELDS, **GBR_HIT_FIELDS},
    "kar": {"knowledge": "kar"},
    "din_text": {"knowledge": "text"},
}
DEFAULT_ROWS = ["din", "din_rer", "din_gbr", "reaseq", "kar"]
