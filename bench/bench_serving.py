"""Load test of app.py's HTTP API: answers per second and latency for 1, 4 and 8 concurrent clients, batching on and off.

    python bench/bench_serving.py [--version MODEL] [--clients 1 4 8] [--questions 25] [--max_new_tokens 16]
                                  [--max_batch_size 8] [--out bench/results/serving.json]

Method (printed with the results): for each mode, app.py is started in a subprocess on 127.0.0.1 (a free
port) with the model folder (default: a tiny random model built by model.tiny), ``--max_batch_size`` 8
(batching on) or 1 (batching off: one question at a time), and OMP_WAIT_POLICY=PASSIVE. Each client is a
thread with its own keep-alive HTTP connection that asks its questions one after the other through
``POST /api/v1/answer``: a question that uploads an image (multipart PNG, a new conversation), then
``--follow_ups`` (4) follow-ups in that conversation (``conversation_id``), and again, so image encoding,
prompts that grow with the history, mask decoding and RLE encoding are all in the load. Every question asks for the
same ``max_new_tokens``; an untrained model rarely stops early, so answers are about that long. Images and
questions come from the model folder's examples/ when it has them (the demo model), else from the page's
three drawings. Two warm-up questions run before each load. Latency is measured by the client from
sending the request to reading the whole answer; answers/s is all answers of the load over its wall time.
From the answers' timings: the model's time per answer (each answer's share of the batch that answered
it: image encoding, generation, masks) and how busy the worker was (their sum over the wall time).
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import REPO_ROOT, text_table, write_results  # noqa: E402
from model.tiny import build_tiny  # noqa: E402
from serving.examples import make_example_images, model_examples  # noqa: E402
from training.distributed import free_port  # noqa: E402

QUESTIONS = ["Please segment the red circle.", "Where is the blue square?", "Segment the dark bar.", "What else is there?", "And the background?"]


@dataclass
class LoadResult:
    batching: bool
    clients: int
    answers: int
    errors: int
    wall_s: float
    answers_per_s: float
    p50_ms: float
    p95_ms: float
    mean_batch_size: float
    model_ms_per_answer: float
    worker_busy_percent: float


def workload(version: Path, folder: Path) -> list[tuple[bytes, str]]:
    """(PNG bytes, question) pairs: the model's examples, else the drawings with generic questions."""
    examples = model_examples(version) or list(zip([p for p, _ in make_example_images(folder)], QUESTIONS))
    pairs = []
    for path, question in examples:
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").save(buffer, format="PNG")
        pairs.append((buffer.getvalue(), question))
    return pairs


class Server:
    """app.py in a subprocess on a free loopback port; stopped with SIGINT (then killed if it hangs)."""

    def __init__(self, version: Path, max_batch_size: int, max_new_tokens: int, threads: int | None, output_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        cmd = [sys.executable, str(REPO_ROOT / "app.py"), "--version", str(version), "--host", "127.0.0.1", "--port", str(self.port),
               "--max_batch_size", str(max_batch_size), "--max_new_tokens", str(max_new_tokens), "--output_dir", str(output_dir)]
        self.log = open(log, "w")
        self.process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"app.py did not answer /api/v1/health within {timeout_s} s; see {self.log.name}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def client(url: str, pairs: list[tuple[bytes, str]], offset: int, questions: int, follow_ups: int, max_new_tokens: int, out: list) -> None:
    """Ask ``questions`` questions: an upload, then ``follow_ups`` follow-ups, and again; append (latency s, timings or None)."""
    with httpx.Client(base_url=url, timeout=300) as http:
        conversation = None
        for q in range(questions):
            image, question = pairs[(offset + q // (follow_ups + 1)) % len(pairs)]
            start = time.perf_counter()
            if q % (follow_ups + 1) == 0:
                response = http.post("/api/v1/answer", files={"image": ("image.png", image, "image/png")},
                                     data={"question": question, "max_new_tokens": str(max_new_tokens)})
            else:
                response = http.post("/api/v1/answer", json={"conversation_id": conversation, "question": QUESTIONS[q % len(QUESTIONS)],
                                                              "max_new_tokens": max_new_tokens})
            latency = time.perf_counter() - start
            if response.status_code != 200:
                out.append((latency, None))
                conversation = None
                continue
            record = response.json()
            conversation = record["conversation_id"]
            out.append((latency, record["timings"]))


def run_load(
    url: str, pairs: list[tuple[bytes, str]], clients: int, questions: int, follow_ups: int, max_new_tokens: int, batching: bool
) -> LoadResult:
    warm: list = []
    client(url, pairs, 0, 2, follow_ups, max_new_tokens, warm)
    results: list[list] = [[] for _ in range(clients)]
    threads = [
        threading.Thread(target=client, args=(url, pairs, c, questions, follow_ups, max_new_tokens, results[c])) for c in range(clients)
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    done = [(latency, timings) for rows in results for latency, timings in rows if timings is not None]
    latencies = [latency for latency, _ in done]
    # Each answer's share of the batch that answered it: the worker's time per answer.
    worker_s = sum(t["model_ms"] / t["batch_size"] for _, t in done) / 1000
    if len(latencies) < 2:
        raise RuntimeError(f"only {len(latencies)} of {clients * questions} questions were answered; see the server log")
    return LoadResult(
        batching=batching,
        clients=clients,
        answers=len(done),
        errors=sum(len(rows) for rows in results) - len(done),
        wall_s=round(wall, 3),
        answers_per_s=round(len(done) / wall, 3),
        p50_ms=round(1000 * statistics.median(latencies), 1),
        p95_ms=round(1000 * statistics.quantiles(latencies, n=100)[94], 1),
        mean_batch_size=round(statistics.mean(t["batch_size"] for _, t in done), 2),
        model_ms_per_answer=round(worker_s * 1000 / len(done), 1),
        worker_busy_percent=round(100 * worker_s / wall, 1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", help="merged model folder (default: a tiny random model, built in a temporary folder)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--questions", type=int, default=25, help="questions per client")
    parser.add_argument("--follow_ups", type=int, default=4, help="follow-up questions after each upload (0: every question uploads)")
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--max_batch_size", type=int, default=8, help="the batching-on mode's batch limit")
    parser.add_argument("--threads", type=int, help="the server's torch CPU threads (OMP_NUM_THREADS; default: torch's)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "serving.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        version = Path(args.version) if args.version else build_tiny(scratch / "tiny", seed=0)
        pairs = workload(version, scratch / "drawings")
        rows: list[LoadResult] = []
        for batch_size in (args.max_batch_size, 1):
            server = Server(version, batch_size, args.max_new_tokens, args.threads, scratch / "app_out", scratch / f"server_{batch_size}.log")
            try:
                server.wait_ready()
                for clients in args.clients:
                    rows.append(run_load(server.url, pairs, clients, args.questions, args.follow_ups, args.max_new_tokens, batch_size > 1))
                    print(f"  batching {'on ' if batch_size > 1 else 'off'} {clients} client(s): {rows[-1].answers_per_s:.2f} answers/s", flush=True)
            finally:
                server.stop()

    method = __doc__.split("Method (printed with the results): ")[1].strip()
    model_name = args.version or "tiny random model (model.tiny, seed 0)"
    when = datetime.datetime.now().astimezone().isoformat(timespec="minutes")
    print(f"\nMethod: {method}\n")
    threads = args.threads or "default"
    print(f"{when}; model {model_name}; {args.questions} questions per client, {args.follow_ups} follow-ups per upload, "
          f"max_new_tokens {args.max_new_tokens}; "
          f"{os.cpu_count()} CPU cores, server torch threads {threads}, torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}\n")
    table = [["batching", "clients", "answers", "errors", "answers/s", "p50 ms", "p95 ms", "mean batch", "model ms/answer", "worker busy"]]
    for r in rows:
        table.append([f"on (max {args.max_batch_size})" if r.batching else "off", str(r.clients), str(r.answers), str(r.errors),
                      f"{r.answers_per_s:.2f}", f"{r.p50_ms:.0f}", f"{r.p95_ms:.0f}", f"{r.mean_batch_size:.2f}",
                      f"{r.model_ms_per_answer:.0f}", f"{r.worker_busy_percent:.0f}%"])
    print(text_table(table))
    by = {(r.batching, r.clients): r for r in rows}
    most = max(args.clients)
    speedup = by[(True, most)].answers_per_s / by[(False, most)].answers_per_s
    print(f"\n{most} clients: batching gives {speedup:.2f}x the answers/s of one question at a time; "
          f"p95 {by[(True, most)].p95_ms:.0f} ms vs {by[(False, most)].p95_ms:.0f} ms")
    write_results(args.out, {
        "date": when,
        "method": method,
        "model": model_name,
        "questions_per_client": args.questions,
        "follow_ups": args.follow_ups,
        "max_new_tokens": args.max_new_tokens,
        "max_batch_size": args.max_batch_size,
        "server_threads": threads,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "load_average_at_end": list(os.getloadavg())},
        "speedup_at_most_clients": round(speedup, 3),
        "rows": [asdict(r) for r in rows],
    })


if __name__ == "__main__":
    main()
