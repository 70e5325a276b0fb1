"""Where the training step's host time goes, from py-spy's samples (`gpu_session.sh host-sample`).

The step is host-bound (the GPU waits for the host to issue the forward), and the torch profiler's
Python tracing inflates host time 1.5-2x and moves it around. py-spy samples the process from
outside without stopping it, so the step runs at its own speed. Three views of the same run:

- wall (`--idle`): every sample of every thread, running or waiting;
- cpu: only samples where the thread was on a CPU (wall - cpu = waiting: for the GIL, a lock, the GPU);
- gil: only the thread holding the GIL.

Only the main thread's samples inside `timed_block` of train_throughput.py count, split by the line
of `main` that called it (the timed block, and each --ab block). Per block: samples by phase (the
line of `train_step`), by the innermost frame of this repository's code, and by leaf frame, as
percent of the block and ms per step (samples / rate / steps). In the gil view, GIL samples per
thread name over the whole run (a worker holding the GIL is a main thread waiting for it).

    python benchmarks/host_samples.py pyspy_wall.txt [--rate 400] [--steps 30] [--top 40] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import linecache
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+):(?P<line>\d+)\)$")
THREAD = re.compile(r"^thread \((?P<id>[^)]*)\)(?:: ?(?P<name>.*))?$")  # the name is missing until the thread has one


@dataclass(frozen=True)
class Frame:
    func: str
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.func} ({self.file}:{self.line})"


@dataclass
class Sample:
    thread: str
    frames: list[Frame]  # root first
    count: int


def parse_raw(text: str) -> tuple[list[Sample], int]:
    """py-spy `--format raw --threads` lines: 'thread (id): name;frame;...;frame count', root first.

    Returns the samples and the number of broken lines, which are skipped: a line without a count at
    the end (the GIL view of session 16 had one among 9,000), or one not starting with a thread (a
    frame name holding a line break splits its sample in two; session 17's on-CPU and GIL views had
    such pieces). A recording where no line starts with a thread lacks --threads: an error."""
    samples = []
    skipped = 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        parts = stack.split(";")
        thread = THREAD.match(parts[0])
        if not count.isdigit() or thread is None:
            skipped += 1
            continue
        frames = []
        for part in parts[1:]:
            match = FRAME.match(part)
            if match:  # native or unnamed frames have no (file:line); they are skipped
                frames.append(Frame(match["func"], match["file"], int(match["line"])))
        samples.append(Sample(re.sub(r"[_-]\d+$", "", thread["name"] or "") or "?", frames, int(count)))
    if skipped and not samples:
        raise ValueError(f"none of {skipped} lines starts with 'thread (id): name' (record with --threads)")
    return samples, skipped


@lru_cache(maxsize=None)
def own_file(file: str) -> Path | None:
    """This repository's file for a frame's path as py-spy prints it (relative to sys.path), or None."""
    for base in (ROOT, ROOT / "benchmarks"):
        path = base / file
        if path.is_file():
            return path
    return None


def source_line(frame: Frame) -> str:
    path = own_file(frame.file)
    return linecache.getline(str(path), frame.line).strip() if path else ""


def with_source(frame: Frame | None) -> str:
    return "?" if frame is None else f"{frame}  {source_line(frame)}".rstrip()


def caller_of(sample: Sample, func: str, file_suffix: str) -> Frame | None:
    """The frame that called `func` (defined in a file ending with file_suffix), or None."""
    for outer, inner in zip(sample.frames, sample.frames[1:]):
        if same_function(inner, func, file_suffix):
            return outer
    return None


def frame_below(sample: Sample, func: str, file_suffix: str) -> Frame | None:
    """The frame of `func` itself (the line it was executing)."""
    return next((f for f in sample.frames if same_function(f, func, file_suffix)), None)


def same_function(frame: Frame, func: str, file_suffix: str) -> bool:
    """py-spy names a nested function by its qualified name on Python 3.11+ (main.<locals>.timed_block)."""
    return (frame.func == func or frame.func.endswith("." + func)) and frame.file.endswith(file_suffix)


def innermost_own(sample: Sample) -> Frame | None:
    return next((f for f in reversed(sample.frames) if own_file(f.file)), None)


def table(counts: Counter, total: int, per_step: float, top: int, describe=str) -> list[dict]:
    return [{"where": describe(key), "percent": round(100 * n / total, 1), "ms_per_step": round(n * per_step, 2)}
            for key, n in counts.most_common(top)]


def summarize(samples: list[Sample], rate: float, steps: int, top: int) -> dict:
    per_step = 1000.0 / rate / steps  # ms per step that one sample stands for
    blocks: dict[Frame, list[Sample]] = defaultdict(list)
    for sample in samples:
        if sample.thread == "MainThread":
            caller = caller_of(sample, "timed_block", "train_throughput.py")
            if caller is not None:
                blocks[caller].append(sample)
    out: dict = {"rate_hz": rate, "steps_per_block": steps, "blocks": []}
    for caller, members in sorted(blocks.items(), key=lambda kv: kv[0].line):
        total = sum(s.count for s in members)
        phases, own, leaves, forward_lines = Counter(), Counter(), Counter(), Counter()
        for s in members:
            step_line = frame_below(s, "train_step", "train_throughput.py")
            phases[step_line] += s.count
            own[innermost_own(s)] += s.count
            leaves[s.frames[-1] if s.frames else None] += s.count
            forward_line = frame_below(s, "forward", "sparse4d/model/sparse4d.py")
            if forward_line is not None:
                forward_lines[forward_line] += s.count
        out["blocks"].append({
            "called_at": with_source(caller),
            "samples": total,
            "ms_per_step": round(total * per_step, 2),
            "by_phase": table(phases, total, per_step, top, with_source),
            "in_sparse4d_forward_by_line": table(forward_lines, total, per_step, top, with_source),
            "by_innermost_own_frame": table(own, total, per_step, top, with_source),
            "by_leaf_frame": table(leaves, total, per_step, top, lambda f: "?" if f is None else str(f)),
        })
    threads = Counter()
    for sample in samples:
        threads[sample.thread] += sample.count
    out["samples_by_thread_whole_run"] = dict(threads.most_common())
    return out


def print_summary(summary: dict, file=sys.stdout) -> None:
    for block in summary["blocks"]:
        print(f"== block {block['called_at']}: {block['samples']} samples, {block['ms_per_step']} ms/step", file=file)
        for name in ("by_phase", "in_sparse4d_forward_by_line", "by_innermost_own_frame", "by_leaf_frame"):
            print(f"  -- {name}", file=file)
            for row in block[name]:
                print(f"  {row['percent']:5.1f}% {row['ms_per_step']:7.2f} ms  {row['where'][:160]}", file=file)
    print(f"== samples by thread (whole run): {summary['samples_by_thread_whole_run']}", file=file)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="py-spy record --format raw --threads output")
    parser.add_argument("--rate", type=float, default=400.0, help="the sampling rate py-spy was given (Hz)")
    parser.add_argument("--steps", type=int, default=30, help="steps per timed block (train_throughput --steps)")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not args.raw.is_file():
        print(f"error: {args.raw} does not exist (py-spy writes it when the sampled process exits)", file=sys.stderr)
        return 2
    try:
        samples, skipped = parse_raw(args.raw.read_text())
    except ValueError as error:
        print(f"error: {args.raw}: {error}", file=sys.stderr)
        return 2
    summary = summarize(samples, args.rate, args.steps, args.top)
    summary["skipped_broken_lines"] = skipped
    print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
