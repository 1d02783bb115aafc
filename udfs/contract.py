"""The intent model's input/output contract, written down once.

The training script exports an ONNX graph with exactly these inputs and outputs and stamps the
metadata keys below; :class:`udfs.model.IntentModel` checks all of it when it loads a model, so
a model that does not fit the job fails at start with a clear message instead of mid-stream.

The graph is a *step* model: it takes the user's recurrent state ``h_prev`` and the raw window of
the user's last ``window`` events ending with the event being scored, and returns the new state
``h_next`` plus every score. Feature engineering (time gaps, same-item flags, session position,
counts) happens inside the graph, so training and serving cannot drift apart. Feeding a user's
events one by one, carrying ``h``, equals scoring the whole history at once.
"""
from __future__ import annotations

from dataclasses import dataclass

# Canonical event types (Avro enum order). Code 0 is padding in the window inputs.
EVENT_TYPES: tuple[str, ...] = (
    "view", "search", "add_to_cart", "remove_from_cart", "favorite", "purchase", "review",
)
TYPE_CODE: dict[str, int] = {name: i + 1 for i, name in enumerate(EVENT_TYPES)}
PAD = 0
MISSING_PRICE = -1.0

# user_stats columns (raw values; the graph applies its own scaling).
USER_STATS: tuple[str, ...] = (
    "events_before_window",   # events of this user that already left the window
    "purchases_total",        # purchases seen before (and including) this event
    "carts_total",            # add_to_cart events seen before (and including) this event
    "seconds_since_first",    # this event's time minus the user's first event time
    "hour_of_day_utc",        # 0..24 (fractional) of this event
    "day_of_week_utc",        # 0=Monday .. 6
)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str            # numpy dtype name
    shape: tuple[str, ...]  # symbolic dims: batch, window, hidden, types, stats


INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("h_prev", "float32", ("batch", "hidden")),
    TensorSpec("ev_type", "int64", ("batch", "window")),     # TYPE_CODE, 0 = padding; left-padded, last = scored event
    TensorSpec("ev_item", "int64", ("batch", "window")),     # crc32(item_id), 0 = no item
    TensorSpec("ev_cat", "int64", ("batch", "window")),      # crc32(category_id), 0 = no category
    TensorSpec("ev_dt", "float32", ("batch", "window")),     # event time minus scored event time, seconds (<= 0)
    TensorSpec("ev_price", "float32", ("batch", "window")),  # price, MISSING_PRICE when unknown
    TensorSpec("user_stats", "float32", ("batch", "stats")),  # USER_STATS columns
)

OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("h_next", "float32", ("batch", "hidden")),
    TensorSpec("p_buy_session", "float32", ("batch",)),
    TensorSpec("p_buy_24h", "float32", ("batch",)),
    TensorSpec("p_cart_abandon", "float32", ("batch",)),
    TensorSpec("p_no_return_48h", "float32", ("batch",)),
    TensorSpec("next_action", "float32", ("batch", "types")),      # softmax over EVENT_TYPES
    TensorSpec("category_scores", "float32", ("batch", "window")),  # per window position; padding = -inf-ish
)

# ONNX metadata_props the exporter must set.
META_CONTRACT = "intentflow.contract"       # must equal CONTRACT_VERSION
META_VERSION = "intentflow.model_version"   # e.g. "gru-attn-2026.12.03-1"
META_WINDOW = "intentflow.window"           # int, the window length the model was trained with
META_HIDDEN = "intentflow.hidden"           # int, size of h
CONTRACT_VERSION = "1"

DIMS_FIXED = {"types": len(EVENT_TYPES), "stats": len(USER_STATS)}
