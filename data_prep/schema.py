"""Column contract of the step dataset (``steps.parquet``) every later stage reads."""

from __future__ import annotations

# The 16 attributes of a ``step.BATCH_SUMMARY`` event, in trace order, with their dtype.
STEP_ATTRIBUTES: dict[str, str] = {
    "step.id": "int",
    "step.ts_start_ns": "int",
    "step.ts_end_ns": "int",
    "step.duration_us": "int",
    "queue.running_depth": "int",
    "queue.waiting_depth": "int",
    "batch.num_prefill_reqs": "int",
    "batch.num_decode_reqs": "int",
    "batch.scheduled_tokens": "int",
    "batch.prefill_tokens": "int",
    "batch.decode_tokens": "int",
    "batch.num_finished": "int",
    "batch.num_preempted": "int",
    "kv.usage_gpu_ratio": "float",
    "kv.blocks_free_gpu": "int",
    "kv.blocks_total_gpu": "int",
}

# Outcomes of a step: kept for analysis, never used as predictors (they leak the answer).
OUTCOME_COLUMNS: tuple[str, ...] = ("batch.num_finished", "batch.num_preempted")

# One value per experiment, repeated on each row.
EXPERIMENT_COLUMNS: tuple[str, ...] = (
    "experiment_id",
    "model",  # canonical model name (data_prep.specs.canonical_model_name)
    "architecture",  # "dense" | "moe"
    "tp",
    "workload",
    "max_num_batched_tokens",
    "max_num_seqs",
    "max_model_len",
)

# Targets (microseconds) and the features derived from the attributes.
SCHEDULE_TARGET = "schedule_us"  # step.duration_us: the scheduler's CPU time
CYCLE_TARGET = "cycle_us"  # mean step-start-to-step-start wall time to the next sampled step
CYCLE_GAP = "cycle_gap_steps"  # how many steps that mean covers
KV_TOKENS = "kv_tokens"  # (blocks_total - blocks_free) * block size: resident KV tokens
TARGETS: dict[str, str] = {"schedule": SCHEDULE_TARGET, "cycle": CYCLE_TARGET}

ROW_KEY: tuple[str, str] = ("experiment_id", "step.id")
