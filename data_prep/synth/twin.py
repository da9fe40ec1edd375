"""Discrete-event twin of the vLLM v1 scheduler (deterministic by seed).

Reusable API (also for a later "replay" feature)::

    from data_prep.synth.twin import simulate
    result = simulate("llama-2-70b", tp=4, workload=WORKLOADS["general"],
                      config=VllmConfig(), seed=0, step_time_fn=None)
    result.steps      # DataFrame, one row per step (all steps): the 16 BATCH_SUMMARY
                      # attributes + schedule_us, gpu_us, cycle_us and true.* features
    result.requests   # DataFrame, one row per request: arrival/first-token/finish times,
                      # ttft_ms, e2e_ms, itl_ms (mean inter-token latency), status
    result.journeys   # per request, its journey events (for the OTLP writer)

``step_time_fn(features: dict) -> float`` (cycle time in us) or ``-> (schedule_us, gpu_us,
cycle_us)`` replaces the latency oracle; ``features`` holds the BATCH_SUMMARY attribute names
(``batch.num_decode_reqs``, ``batch.prefill_tokens``, ``queue.running_depth``,
``kv.blocks_free_gpu`` ...) plus ``kv_tokens`` and the true-only ``true.*`` quantities
(``true.context_tokens``, ``true.attn_pairs``, ``true.new_blocks``, ``true.admitted``,
``true.used_blocks``). Outcomes (``batch.num_finished``) are not known when it is called.

Scheduler model: continuous batching; per step a token budget (max_num_batched_tokens) and
max_num_seqs; running decode requests first (one token each), then running chunked prefills,
then waiting requests in arrival order (preempted ones first); chunked prefill (or whole
prompts only when it is off); KV blocks of 16 tokens from a fixed pool with prefix caching
(hash chain over full prompt blocks, LRU eviction of unreferenced cached blocks, a fully
cached prompt still recomputes its last block); preemption by recompute of the most recently
admitted running request when a decode cannot get a block; requests stop at their fixed
output length (ignore_eos), truncated at max_model_len.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from data_prep.schema import STEP_ATTRIBUTES
from data_prep.specs import get_model_spec, load_hardware
from data_prep.synth.oracle import Oracle
from data_prep.synth.workloads import (
    CLIENT_DRAIN_S,
    CLIENT_TIMEOUT_S,
    DEFAULT_CONFIG,
    VllmConfig,
    Workload,
    kv_blocks_total,
)

MONOTONIC_ORIGIN_NS = 20_020_000_000_000  # server monotonic clock at the first arrival
STEP_COLUMNS: tuple[str, ...] = tuple(STEP_ATTRIBUTES)  # BATCH_SUMMARY attributes, trace order
TRUE_COLUMNS = (
    "true.context_tokens",
    "true.attn_pairs",
    "true.new_blocks",
    "true.admitted",
    "true.used_blocks",
)
# journey tuple: (event, ts_ns, step, phase, prefill_done, prefill_total, decode_done,
#                 decode_max, num_preemptions, schedule_kind, finish_status)


class _Req:
    __slots__ = (
        "rid",
        "arrival",
        "prompt",
        "max_out",
        "group",
        "pid",
        "computed",
        "nout",
        "nblocks",
        "keys",
        "keys_ok",
        "npre",
        "first_ns",
        "finish_ns",
        "status",
        "journey",
        "sched_n",
    )

    def __init__(self, rid, arrival, prompt, max_out, group, pid):
        self.rid = rid
        self.arrival = arrival
        self.prompt = prompt
        self.max_out = max_out
        self.group = group
        self.pid = pid
        self.computed = 0
        self.nout = 0
        self.nblocks = 0
        self.keys = []
        self.keys_ok = True
        self.npre = 0
        self.first_ns = -1
        self.finish_ns = -1
        self.status = "waiting"
        self.journey = []
        self.sched_n = 0


@dataclass
class TwinResult:
    steps: pd.DataFrame
    requests: pd.DataFrame
    journeys: list[list[tuple]] = field(repr=False)
    kv_blocks_total: int = 0
    end_ns: int = 0


def arrival_times_ns(workload: Workload, rng: np.random.Generator) -> np.ndarray:
    """Constant-rate load: rate x duration arrivals per stage, exponential gaps rescaled."""
    out = []
    start = 0.0
    for stage in workload.stages:
        n = int(round(stage.rate_rps * stage.duration_s))
        if n > 0:
            gaps = rng.exponential(1.0, n + 1)
            cum = np.cumsum(gaps)
            out.append(start + cum[:-1] / cum[-1] * stage.duration_s)
        start += stage.duration_s
    times = np.concatenate(out) if out else np.zeros(0)
    return (times * 1e9).astype(np.int64)


def simulate(
    model: str,
    tp: int,
    workload: Workload,
    config: VllmConfig = DEFAULT_CONFIG,
    seed: int | np.random.SeedSequence = 0,
    step_time_fn: Callable | None = None,
    hardware: str = "h100-sxm",
    kv_blocks: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> TwinResult:
    """Run the twin for one deployment and workload; see the module docstring."""
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    ss_arr, ss_oracle = ss.spawn(2)
    rng_arr = np.random.default_rng(ss_arr)
    spec = get_model_spec(model)
    hw = load_hardware(hardware)
    total_blocks = kv_blocks or kv_blocks_total(spec, tp, hw.hbm_capacity_gb)
    if step_time_fn is None:
        timefn = Oracle(spec, hw, tp, np.random.default_rng(ss_oracle))
    else:
        timefn = step_time_fn

    B = config.block_size
    budget_max = config.token_budget
    max_seqs = config.max_num_seqs
    chunked = config.chunked_prefill
    caching = config.prefix_caching
    n_groups = workload.num_groups
    sys_blocks = workload.system_prompt_tokens // B

    arrivals = arrival_times_ns(workload, rng_arr)
    n_req = len(arrivals)
    groups = rng_arr.integers(0, n_groups, n_req)
    pids = groups * workload.prompts_per_group + rng_arr.integers(
        0, workload.prompts_per_group, n_req
    )
    prompt_len = min(workload.prompt_tokens, config.max_model_len - 1)
    max_out = max(1, min(workload.output_tokens, config.max_model_len - prompt_len))
    reqs = [
        _Req(
            i,
            int(arrivals[i]) + MONOTONIC_ORIGIN_NS,
            prompt_len,
            max_out,
            int(groups[i]),
            int(pids[i]),
        )
        for i in range(n_req)
    ]
    stage_end = MONOTONIC_ORIGIN_NS + int(workload.duration_s * 1e9)
    hard_end = stage_end + int(CLIENT_DRAIN_S * 1e9)
    timeout_ns = int(CLIENT_TIMEOUT_S * 1e9)

    # KV pool: uncached free blocks + LRU of cached blocks nobody references (also free)
    pool = {"free": total_blocks}
    ref: dict[int, int] = {}
    evict: OrderedDict[int, None] = OrderedDict()

    def key_of(r: _Req, j: int) -> int:
        if j < sys_blocks:
            return (r.group << 20) | j
        return (1 << 40) | (r.pid << 20) | j

    def free_req(r: _Req) -> None:
        for k in r.keys:
            c = ref[k] - 1
            if c:
                ref[k] = c
            else:
                del ref[k]
                evict[k] = None
        pool["free"] += r.nblocks - len(r.keys)
        r.nblocks = 0
        r.keys = []
        r.keys_ok = True

    def take_uncached(k: int) -> None:
        f = pool["free"]
        if f >= k:
            pool["free"] = f - k
            return
        pool["free"] = 0
        for _ in range(k - f):
            evict.popitem(last=False)

    def register(r: _Req, upto_tokens: int) -> None:
        """Cache the request's full prompt blocks computed up to ``upto_tokens``."""
        if not caching or not r.keys_ok:
            return
        full = min(upto_tokens, r.prompt) // B
        j = len(r.keys)
        while j < full:
            k = key_of(r, j)
            if k in ref or k in evict:
                r.keys_ok = False
                return
            ref[k] = 1
            r.keys.append(k)
            j += 1

    running: list[_Req] = []
    waiting: deque[_Req] = deque()
    outstanding: deque[_Req] = deque()
    rows: list[tuple] = []
    nxt = 0
    t = int(arrivals[0]) + MONOTONIC_ORIGIN_NS if n_req else MONOTONIC_ORIGIN_NS
    step_id = 0
    progress_every = 2000

    def abort(r: _Req, now: int) -> None:
        if r.status == "running":
            running.remove(r)
            free_req(r)
        elif r.status == "waiting":
            waiting.remove(r)
        r.status = "aborted"
        r.finish_ns = now
        r.journey.append(
            (
                "FINISHED",
                now,
                step_id,
                _phase(r),
                min(r.computed, r.prompt),
                r.prompt,
                r.nout,
                r.max_out,
                r.npre,
                "",
                "ABORTED",
            )
        )

    while True:
        # arrivals up to now
        while nxt < n_req and reqs[nxt].arrival <= t:
            r = reqs[nxt]
            r.journey.append(
                (
                    "QUEUED",
                    r.arrival + 40_000,
                    step_id,
                    "WAITING",
                    0,
                    r.prompt,
                    0,
                    r.max_out,
                    0,
                    "",
                    "",
                )
            )
            waiting.append(r)
            outstanding.append(r)
            nxt += 1
        # client timeouts and the end of the run
        while outstanding and outstanding[0].status in ("finished", "aborted"):
            outstanding.popleft()
        while outstanding and outstanding[0].arrival + timeout_ns < t:
            abort(outstanding.popleft(), t)
        if t > hard_end:
            for r in list(outstanding):
                if r.status not in ("finished", "aborted"):
                    abort(r, t)
            break
        if not running and not waiting:
            if nxt >= n_req:
                break
            t = max(t, reqs[nxt].arrival + 200_000)
            continue

        # ---------------- schedule ----------------
        budget = budget_max
        sched: list[_Req] = []
        n_pre = 0
        new_blocks = 0
        i = 0
        end = len(running)
        self_preempted: list[_Req] = []
        # pass 1: decodes (one token each), in running order
        while i < end and budget > 0:
            r = running[i]
            if r.prompt + r.nout - r.computed == 1:
                need = (r.computed + B) // B - r.nblocks
                if need > 0:
                    while need > pool["free"] + len(evict):
                        if end - 1 > i:
                            end -= 1
                            v = running[end]
                            _preempt(v, free_req, step_id, t)
                            n_pre += 1
                        else:
                            break
                    if need > pool["free"] + len(evict):
                        _preempt(r, free_req, step_id, t)
                        self_preempted.append(r)
                        n_pre += 1
                        i += 1
                        continue
                    take_uncached(need)
                    r.nblocks += need
                    new_blocks += need
                r.sched_n = 1
                sched.append(r)
                budget -= 1
            i += 1
        if end < len(running) or self_preempted:
            victims = running[end:]
            running = [r for r in running[:end] if r.status == "running"]
            for v in reversed(victims):
                waiting.appendleft(v)
            for v in reversed(self_preempted):
                waiting.appendleft(v)
        # pass 2: running chunked prefills (and recomputes), in running order
        if budget > 0:
            for r in running:
                rem = r.prompt + r.nout - r.computed
                if rem <= 1:
                    continue
                n = rem if rem <= budget else (budget if chunked else 0)
                if n <= 0:
                    continue
                need = (r.computed + n + B - 1) // B - r.nblocks
                if need > pool["free"] + len(evict):
                    continue
                if need > 0:
                    take_uncached(need)
                    r.nblocks += need
                    new_blocks += need
                register(r, r.computed + n)
                r.sched_n = n
                sched.append(r)
                budget -= n
                if budget <= 0:
                    break
        # pass 3: waiting requests in order
        admitted = 0
        while waiting and budget > 0 and len(running) < max_seqs:
            r = waiting[0]
            total = r.prompt + r.nout
            hits: list[int] = []
            if caching:
                cap = min(r.prompt // B, (total - 1) // B)
                j = 0
                while j < cap:
                    k = key_of(r, j)
                    if k in ref or k in evict:
                        hits.append(k)
                        j += 1
                    else:
                        break
            start = len(hits) * B
            rem = total - start
            n = rem if rem <= budget else (budget if chunked else 0)
            if n <= 0:
                break
            need = (start + n + B - 1) // B - len(hits)
            n_evictable_hits = sum(1 for k in hits if k in evict)
            if need > pool["free"] + len(evict) - n_evictable_hits:
                break
            waiting.popleft()
            for k in hits:
                if k in evict:
                    del evict[k]
                    ref[k] = 1
                else:
                    ref[k] += 1
            r.keys = hits
            r.keys_ok = True
            r.computed = start
            take_uncached(need)
            r.nblocks = len(hits) + need
            new_blocks += need
            register(r, start + n)
            r.status = "running"
            r.sched_n = n
            running.append(r)
            sched.append(r)
            budget -= n
            admitted += 1
            r.journey.append(
                (
                    "SCHEDULED",
                    t,
                    step_id,
                    _phase(r),
                    min(start, r.prompt),
                    r.prompt,
                    r.nout,
                    r.max_out,
                    r.npre,
                    "RESUMED" if r.npre else "FIRST",
                    "",
                )
            )

        # ---------------- batch summary ----------------
        n_prefill = n_decode = p_tok = d_tok = 0
        ctx = 0
        pairs = 0.0
        for r in sched:
            n = r.sched_n
            if r.nout:
                n_decode += 1
                d_tok += n
            else:
                n_prefill += 1
                p_tok += n
            c = r.computed + n
            ctx += c
            if n > 1:
                pairs += n * (r.computed + 0.5 * n)
        free_blocks = pool["free"] + len(evict)
        used = total_blocks - free_blocks
        feats = {
            "queue.running_depth": len(running),
            "queue.waiting_depth": len(waiting),
            "batch.num_prefill_reqs": n_prefill,
            "batch.num_decode_reqs": n_decode,
            "batch.scheduled_tokens": p_tok + d_tok,
            "batch.prefill_tokens": p_tok,
            "batch.decode_tokens": d_tok,
            "kv.blocks_free_gpu": free_blocks,
            "kv.blocks_total_gpu": total_blocks,
            "kv_tokens": used * B,
            "true.context_tokens": ctx,
            "true.attn_pairs": pairs,
            "true.new_blocks": new_blocks,
            "true.admitted": admitted,
            "true.used_blocks": used,
        }
        out = timefn(feats)
        if isinstance(out, tuple):
            sched_us, gpu_us, cycle_us = out
        else:
            sched_us, gpu_us, cycle_us = float("nan"), float("nan"), float(out)
        dur_us = int(round(sched_us)) if sched_us == sched_us else 0
        cycle_ns = max(int(round(cycle_us * 1000.0)), dur_us * 1000 + 1000)
        t_end = t + cycle_ns

        # ---------------- outcomes ----------------
        n_fin = 0
        for r in sched:
            r.computed += r.sched_n
            if r.computed == r.prompt + r.nout:
                r.nout += 1
                if r.nout == 1:
                    r.first_ns = t_end
                    r.journey.append(
                        (
                            "FIRST_TOKEN",
                            t_end,
                            step_id,
                            "DECODE",
                            r.prompt,
                            r.prompt,
                            1,
                            r.max_out,
                            r.npre,
                            "",
                            "",
                        )
                    )
                if r.nout >= r.max_out:
                    r.status = "finished"
                    r.finish_ns = t_end
                    free_req(r)
                    n_fin += 1
                    r.journey.append(
                        (
                            "FINISHED",
                            t_end,
                            step_id,
                            "DECODE",
                            r.prompt,
                            r.prompt,
                            r.nout,
                            r.max_out,
                            r.npre,
                            "",
                            "LENGTH",
                        )
                    )
        if n_fin:
            running = [r for r in running if r.status == "running"]
        rows.append(
            (
                step_id,
                t,
                t + dur_us * 1000,
                dur_us,
                feats["queue.running_depth"],
                feats["queue.waiting_depth"],
                n_prefill,
                n_decode,
                p_tok + d_tok,
                p_tok,
                d_tok,
                n_fin,
                n_pre,
                1.0 - free_blocks / total_blocks,
                free_blocks,
                total_blocks,
                ctx,
                pairs,
                new_blocks,
                admitted,
                used,
                sched_us,
                gpu_us,
                cycle_us,
            )
        )
        step_id += 1
        t = t_end
        if progress is not None and step_id % progress_every == 0:
            progress(progress_every)
    if progress is not None:
        progress(step_id % progress_every)

    cols = list(STEP_COLUMNS) + list(TRUE_COLUMNS) + ["schedule_us", "gpu_us", "busy_cycle_us"]
    steps = pd.DataFrame.from_records(rows, columns=cols)
    starts = steps["step.ts_start_ns"].to_numpy()
    wall = np.empty(len(starts), dtype=np.float64)
    if len(starts):
        wall[:-1] = np.diff(starts) / 1000.0
        wall[-1] = steps["busy_cycle_us"].iloc[-1]
    steps["cycle_us"] = wall
    steps["kv_tokens"] = (steps["kv.blocks_total_gpu"] - steps["kv.blocks_free_gpu"]) * B

    recs = []
    for r in reqs:
        first = r.first_ns if r.first_ns >= 0 else np.nan
        fin = r.finish_ns if r.finish_ns >= 0 else np.nan
        ttft = (first - r.arrival) / 1e6 if r.first_ns >= 0 else np.nan
        e2e = (fin - r.arrival) / 1e6 if r.status == "finished" else np.nan
        itl = (
            (r.finish_ns - r.first_ns) / 1e6 / (r.nout - 1)
            if r.status == "finished" and r.nout > 1
            else np.nan
        )
        recs.append(
            (r.rid, r.arrival, first, fin, r.prompt, r.nout, r.npre, r.status, ttft, e2e, itl)
        )
    requests = pd.DataFrame.from_records(
        recs,
        columns=[
            "request_index",
            "arrival_ns",
            "first_token_ns",
            "finish_ns",
            "prompt_tokens",
            "output_tokens",
            "num_preemptions",
            "status",
            "ttft_ms",
            "e2e_ms",
            "itl_ms",
        ],
    )
    return TwinResult(
        steps=steps,
        requests=requests,
        journeys=[r.journey for r in reqs],
        kv_blocks_total=total_blocks,
        end_ns=t,
    )


def _phase(r: _Req) -> str:
    return "DECODE" if r.nout else "PREFILL"


def _preempt(r: _Req, free_req, step_id: int, t: int) -> None:
    free_req(r)
    r.journey.append(
        (
            "PREEMPTED",
            t,
            step_id,
            _phase(r),
            min(r.computed, r.prompt),
            r.prompt,
            r.nout,
            r.max_out,
            r.npre + 1,
            "",
            "",
        )
    )
    r.computed = 0
    r.npre += 1
    r.status = "waiting"


__all__ = ["STEP_COLUMNS", "TwinResult", "arrival_times_ns", "simulate"]
