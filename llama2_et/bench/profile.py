"""Where a decode step's time goes: an ETDump profile of a program that takes (tokens, input_pos)."""

from __future__ import annotations

import tempfile
from pathlib import Path

PROFILE_WRAPPERS = {
    "Method::execute",
    "Program::load_method",
    "Method::init",
    "OPERATOR_CALL",
    "DELEGATE_CALL",
}


def profile_decode(pte_path: str | Path, prompt_ids: list[int], decode_steps: int = 32) -> dict:
    """ETDump profile of decode_steps greedy steps of a (tokens, input_pos) program (ours or export_llm's).

    Returns per decode step: total ms, the delegate calls and their ms, the portable (non-delegated)
    operator calls and their ms, and the ops that take the most time.
    """
    from executorch.devtools import Inspector

    from ..generate import Sampler, generate
    from ..runtime import PteDecoder

    decoder = PteDecoder(pte_path, enable_etdump=True)
    list(generate(decoder, prompt_ids, decode_steps + 1, Sampler(), stop_ids=()))  # prefill + decode_steps
    with tempfile.TemporaryDirectory() as tmp:
        etdump = str(Path(tmp) / "decode.etdp")
        decoder.program.write_etdump_result_to_file(etdump, str(Path(tmp) / "debug.bin"))
        frame = Inspector(etdump_path=etdump).to_dataframe()
    per_step: dict[str, list[float]] = {}  # event name -> [ms per step, calls per step]
    for name, raw in zip(frame["event_name"], frame["raw"], strict=True):
        if len(raw) != decode_steps + 1:
            continue  # not a per-run event (loading, init)
        decode_ms = raw[1:]  # raw[0] is the prefill run
        entry = per_step.setdefault(name, [0.0, 0.0])
        entry[0] += sum(decode_ms) / len(decode_ms)
        entry[1] += 1
    top = sorted((n for n in per_step if n not in PROFILE_WRAPPERS), key=lambda n: -per_step[n][0])
    portable = [
        n for n in per_step if n.startswith("native_call_") or "::" in n and n not in PROFILE_WRAPPERS
    ]
    return {
        "step_ms": per_step["Method::execute"][0],
        "delegate_calls": per_step.get("DELEGATE_CALL", [0, 0])[1],
        "delegate_ms": per_step.get("DELEGATE_CALL", [0.0])[0],
        "portable_calls": sum(per_step[n][1] for n in portable),
        "portable_ms": sum(per_step[n][0] for n in portable),
        "top_ops": [{"op": n, "ms": per_step[n][0], "calls": per_step[n][1]} for n in top[:10]],
    }


def other_ms(profile: dict) -> float:
    """A step's time in no profiled op: the runtime moving between instructions, inputs and outputs."""
    return profile["step_ms"] - profile["delegate_ms"] - profile["portable_ms"]


def format_profile(profiles: dict[str, dict]) -> str:
    """Decode profiles side by side (keyed by row label): where a step's time goes."""
    lines = ["decode step profile (ETDump, ms per step):"]
    for label, p in profiles.items():
        lines.append(
            f"  {label}: {p['step_ms']:.2f} ms = {p['delegate_calls']:.0f} delegate calls {p['delegate_ms']:.2f} ms"
            f" + {p['portable_calls']:.0f} non-delegated ops {p['portable_ms']:.2f} ms"
            f" + {other_ms(p):.2f} ms between them (the runtime's own work); top: "
            + ", ".join(f"{o['op']} {o['ms']:.2f}" for o in p["top_ops"][:6])
        )
    return "\n".join(lines)
