"""Real faults under real load, through serve.run: a model replica SIGKILLed, the Redis cache
stopped, killed and frozen, the whole app crashed and redeployed on its store.

Each test holds a closed-loop load (client threads, each sending one request after another)
while it injects the fault, asserts its guarantee on every request of the load, and adds its
figures to ``test-artifacts/guarantees/faults.json`` (``tests/support/guarantees.py``), which
docs/guarantees.md quotes. Only processes of the apps started here are killed: replica PIDs
come from this session's Ray, filtered by app name, and are checked against their process
title first.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from graphs.app import build_app
from tests.support.common import (
    RedisServer,
    jpeg_bytes,
    make_test_config,
    noise_image,
    wait_until_healthy,
)
from tests.support.guarantees import percentile, record_figures
from tests.support.postgres import PostgresServer
from vlgraph.config import AppConfig, IngressConfig

pytestmark = pytest.mark.integration

T = TypeVar("T")

#: Bound on a replica's replacement: Serve notices the death at its next health check (every
#: 10 s by default) and starts a new worker (torch import, model load: 5 s on a quiet 2-core
#: machine, over 40 s on a crowded one). Generous, to fail only when recovery is broken.
RECOVERY_BOUND_S = 90.0
#: Bound on the restart of a whole app (every replica at once), as for a first start.
RESTART_BOUND_S = 120.0
#: Bound on the p99 latency of a request while the Redis cache is down or hung (its own
#: timeout is 0.25 s per call, two calls per request).
OUTAGE_P99_BOUND_S = 3.0
#: Client timeout of the load: a request past it counts as a hang.
CLIENT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Outcome:
    """One request of a load: when it was sent and answered (monotonic seconds) and how."""

    kind: str
    sent: float
    done: float
    status: int | None
    """None: no HTTP answer (connection error, or no answer within the client timeout)."""
    code: str | None
    """The error body's ``error.code``."""
    retry_after: str | None
    body: Any
    """The JSON body of a 200."""
    tag: Any = None
    """What the step sent, for checking later."""
    note: str | None = None
    """A transport error, or the start of a non-JSON body."""

    @property
    def latency(self) -> float:
        """Seconds from sending to the answer."""
        return self.done - self.sent


def timed(kind: str, call: Callable[[], httpx.Response], tag: Any = None) -> Outcome:
    """Send one request (``call``) and keep what the checks need from its answer."""
    sent = time.monotonic()
    try:
        response = call()
    except httpx.HTTPError as error:
        return Outcome(kind, sent, time.monotonic(), None, None, None, None, tag, repr(error))
    done = time.monotonic()
    try:
        payload = response.json()
    except ValueError:
        payload = None
    code = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        code = payload["error"].get("code")
    note = None if payload is not None else response.text[:200]
    body = payload if response.status_code == 200 else None
    retry_after = response.headers.get("retry-after")
    return Outcome(kind, sent, done, response.status_code, code, retry_after, body, tag, note)


Step = Callable[[httpx.Client, int, int], Outcome]


class Load:
    """Client threads, each sending ``step(client, worker, n)`` requests one after another
    until :meth:`stop`; every outcome is kept (in completion order)."""

    def __init__(self, url: str, workers: int, step: Step) -> None:
        self.outcomes: list[Outcome] = []
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(url, worker, step), daemon=True)
            for worker in range(workers)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, url: str, worker: int, step: Step) -> None:
        with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
            n = 0
            while not self._stopping.is_set():
                outcome = step(client, worker, n)
                self.outcomes.append(outcome)
                n += 1
                if outcome.status != 200:
                    # An app that is down answers at once: leave the CPUs to its restart.
                    self._stopping.wait(0.05)

    def since(self, moment: float) -> list[Outcome]:
        """The finished requests sent at or after ``moment``."""
        return [outcome for outcome in list(self.outcomes) if outcome.sent >= moment]

    def hold(self, seconds: float, min_requests: int) -> float:
        """Keep the load going for ``seconds`` and until ``min_requests`` more requests, sent
        from now, have finished; the moment the phase began."""
        began = time.monotonic()
        poll(
            lambda: time.monotonic() - began >= seconds and len(self.since(began)) >= min_requests,
            timeout_s=seconds + 60,
            what=f"{min_requests} requests under load",
        )
        return began

    def stop(self) -> list[Outcome]:
        """Stop sending and wait for the requests in flight; every outcome."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=CLIENT_TIMEOUT_S + 10)
        assert not any(thread.is_alive() for thread in self._threads), "a client hung"
        return list(self.outcomes)


def poll(condition: Callable[[], T], timeout_s: float, what: str, every_s: float = 0.05) -> T:
    """Call ``condition`` until it returns something true (returned); fail after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(every_s)


def replica_pids(app: str, deployment: str | None = None) -> dict[str, int]:
    """Live replica actors of ``app`` (of one deployment, else all): actor id -> worker PID.
    Read from the GCS actor table of this session's Ray: the state API (``list_actors``)
    needs the dashboard, which the tests' Ray runs without."""
    import ray

    prefix = f"ServeReplica:{app}:"
    return {
        actor_id: info["Pid"]
        for actor_id, info in ray._private.state.actors().items()
        if info["State"] == "ALIVE"
        and info["ActorClassName"].startswith(prefix)
        and (deployment is None or info["ActorClassName"] == prefix + deployment)
    }


def sigkill_replica(app: str, pid: int) -> None:
    """SIGKILL one replica worker of ``app``, once its process title confirms what it is."""
    title = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert f"ServeReplica:{app}:".encode() in title, (pid, title)
    os.kill(pid, signal.SIGKILL)


def replica_states(app: str, deployment: str) -> dict[str, int]:
    """Serve's count of the deployment's replicas by state, e.g. ``{"RUNNING": 2}``."""
    from ray import serve

    states = serve.status().applications[app].deployments[deployment].replica_states
    return {str(getattr(state, "value", state)): count for state, count in states.items()}


def served_variant(checkpoint_cache: Path, image_root: Path, data_dir: Path) -> dict:
    """The test app's arguments with BLIP alone: every other model left out, no cache."""
    args = make_test_config(checkpoint_cache, image_root, data_dir).model_dump(mode="json")
    args["models"].update(blip2=None, gemma=None, intern_vlm=None)
    args.update(vqa=None, clip_image=None, clip_text=None, sd=None, sdxl=None)
    args["cache"] = {"backend": "none"}
    # The profile default, not the test config's 3 s (there for the security tests to cross):
    # the deadline runs from the ingress's start, and while a replacement replica imports
    # torch on a crowded machine, even a tiny body can take 3 s to cross from Serve's proxy.
    args["ingress"]["body_timeout_s"] = IngressConfig.model_fields["body_timeout_s"].default
    return args


def start_app(args: dict, name: str, port: int) -> str:
    """``serve.run`` the variant as application ``name`` under ``/name``; its URL once every
    model is reachable."""
    from ray import serve

    serve.run(build_app(AppConfig.model_validate(args)), name=name, route_prefix=f"/{name}")
    url = f"http://127.0.0.1:{port}/{name}"
    wait_until_healthy(url)
    return url


def png_bytes(seed: int) -> bytes:
    """A reproducible PNG, distinct per seed."""
    buffer = io.BytesIO()
    noise_image(seed).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def figures() -> Iterator[dict[str, Any]]:
    """Each test's figures, written for docs/guarantees.md once the module is done."""
    collected: dict[str, Any] = {}
    yield collected
    if collected:
        record_figures("faults", "pytest tests/guarantees/test_faults.py", **collected)


# --------------------------------------------------------------------------------------------
# 1. A model replica killed under load


def test_a_killed_replica_fails_only_its_requests_in_flight(
    ray_instance: int,
    checkpoint_cache: Path,
    image_root: Path,
    tmp_path: Path,
    figures: dict[str, Any],
) -> None:
    """BLIP at 2 replicas under 8 clients; one replica SIGKILLed. Only requests in flight at
    the kill fail, each with 503 ``replica_unavailable`` and Retry-After; every request sent
    after it succeeds; Serve is back to 2 RUNNING replicas within the bound."""
    from ray import serve

    app, deployment = "faults-replica", "blip_caption"
    args = served_variant(checkpoint_cache, image_root, tmp_path / "data")
    blip = args["models"]["blip"]
    blip["deployment"]["num_replicas"] = 2
    # One caption at a time, 20 tokens each: requests wait their turn on the replicas, so that
    # a few are always in flight on the one killed.
    blip["generation"].update(max_new_tokens=20, min_new_tokens=20)
    blip["batching"]["max_batch_size"] = 1
    try:
        url = start_app(args, app, ray_instance)
        assert len(replica_pids(app, deployment)) == 2
        assert replica_states(app, deployment) == {"RUNNING": 2}

        def caption(client: httpx.Client, worker: int, n: int) -> Outcome:
            body = {"image_path": f"noise{(worker + n) % 6}.jpg"}
            return timed("caption", lambda: client.post("/caption", json=body))

        with Load(url, 8, caption) as load:
            load.hold(1.5, min_requests=16)
            victim, pid = next(iter(replica_pids(app, deployment).items()))
            killed_at = time.monotonic()
            sigkill_replica(app, pid)

            def replaced() -> bool:
                alive = replica_pids(app, deployment)
                return (
                    len(alive) == 2
                    and victim not in alive
                    and replica_states(app, deployment) == {"RUNNING": 2}
                )

            poll(replaced, RECOVERY_BOUND_S, "2 RUNNING replicas after the kill", every_s=0.2)
            recovery_s = time.monotonic() - killed_at
            load.hold(1.0, min_requests=16)  # and on, with the replacement in the rotation
        outcomes = load.outcomes
    finally:
        serve.delete(app)

    failures = [outcome for outcome in outcomes if outcome.status != 200]
    in_flight = [o for o in outcomes if o.sent < killed_at < o.done]
    after = [o for o in outcomes if o.sent >= killed_at]
    shown = [(o.status, o.code, o.note, round(o.sent - killed_at, 3)) for o in failures]
    assert failures, "no request was in flight on the killed replica: nothing was proven"
    assert all(o.sent < killed_at < o.done for o in failures), shown
    assert all(o.status == 503 and o.code == "replica_unavailable" for o in failures), shown
    assert all(o.retry_after for o in failures), shown
    assert all(o.status == 200 for o in after), shown
    assert len(after) >= 32, "the load went on after the kill"
    figures["replica_kill"] = {
        "clients": 8,
        "replicas": 2,
        "requests_sent": len(outcomes),
        "requests_in_flight_at_kill": len(in_flight),
        "failures": len(failures),
        "failure_codes": dict(Counter(f"{o.status} {o.code}" for o in failures)),
        "requests_sent_after_kill": len(after),
        "failures_sent_after_kill": sum(o.status != 200 for o in after),
        "recovery_to_2_running_s": round(recovery_s, 2),
        "recovery_bound_s": RECOVERY_BOUND_S,
    }


# --------------------------------------------------------------------------------------------
# 2. The Redis cache stopped, killed and frozen under load


def test_a_redis_cache_outage_fails_no_request(
    ray_instance: int,
    checkpoint_cache: Path,
    image_root: Path,
    tmp_path: Path,
    figures: dict[str, Any],
) -> None:
    """Captions of 4 images under 8 clients, cached in Redis; Redis stopped, then SIGKILLed,
    then frozen (SIGSTOP), each for 2 s and brought back. Every request answers 200 with a
    caption, p99 during each outage stays under the bound, and hits come back after it."""
    from ray import serve

    app = "faults-cache"
    redis_server = RedisServer()  # its own: the session's serves other tests
    redis_server.start()
    args = served_variant(checkpoint_cache, image_root, tmp_path / "data")
    args["cache"] = {"backend": "redis", "redis_host": "127.0.0.1", "redis_port": redis_server.port}
    images = [jpeg_bytes(noise_image(300 + index)) for index in range(4)]

    def caption(client: httpx.Client, worker: int, n: int) -> Outcome:
        index = (worker + n) % len(images)
        files = [("images", (f"{index}.jpg", images[index], "image/jpeg"))]
        return timed(
            "caption",
            lambda: client.post("/api/caption-images", params={"model": "blip"}, files=files),
            tag=index,
        )

    faults: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "stopped": (redis_server.stop, redis_server.start),
        "killed": (redis_server.kill, redis_server.start),
        "frozen": (redis_server.pause, redis_server.resume),
    }
    phases: dict[str, dict[str, Any]] = {}
    try:
        url = start_app(args, app, ray_instance)
        with Load(url, 8, caption) as load:
            load.hold(1.0, min_requests=16)
            poll(lambda: any(is_hit(o) for o in list(load.outcomes)), 30, "a first hit")
            for name, (fault, repair) in faults.items():
                began = time.monotonic()
                fault()
                load.hold(2.0, min_requests=16)
                repaired = time.monotonic()
                repair()
                back = time.monotonic()
                first_hit = poll(
                    lambda back=back: next((o for o in load.since(back) if is_hit(o)), None),
                    30,
                    f"a cache hit after Redis was {name}",
                )
                during = [o for o in load.since(began) if o.sent < repaired]
                latencies = [o.latency for o in during]
                phases[name] = {
                    "requests": len(during),
                    "errors": sum(not is_answered(o) for o in during),
                    "hits": sum(is_hit(o) for o in during if is_answered(o)),
                    "p50_s": round(percentile(latencies, 0.5), 3),
                    "p99_s": round(percentile(latencies, 0.99), 3),
                    "hits_resume_s": round(first_hit.done - back, 3),
                }
            load.hold(0.5, min_requests=8)
        outcomes = load.outcomes
    finally:
        redis_server.resume()  # a frozen server ignores SIGTERM
        serve.delete(app)
        redis_server.stop()

    errors = [(o.status, o.code, o.note) for o in outcomes if not is_answered(o)]
    assert not errors, errors
    captions: dict[int, set[str]] = {}
    for outcome in outcomes:
        captions.setdefault(outcome.tag, set()).add(outcome.body["results"][0]["caption"])
    assert all(len(seen) == 1 for seen in captions.values()), "a cached answer differs"
    for name, phase in phases.items():
        assert phase["requests"] >= 16 and phase["errors"] == 0, (name, phase)
        assert phase["p99_s"] < OUTAGE_P99_BOUND_S, (name, phase)
    figures["redis_cache_outage"] = {
        "clients": 8,
        "distinct_images": len(images),
        "requests": len(outcomes),
        "errors": len(errors),
        "cache_timeout_s": 0.25,
        "p99_bound_s": OUTAGE_P99_BOUND_S,
        "phases": phases,
    }


def is_answered(outcome: Outcome) -> bool:
    """A 200 whose one image got a caption."""
    if outcome.status != 200:
        return False
    (item,) = outcome.body["results"]
    return item["error"] is None and bool(item["caption"])


def is_hit(outcome: Outcome) -> bool:
    """A 200 answered by the cache."""
    return is_answered(outcome) and outcome.body["results"][0]["cache"] is True


# --------------------------------------------------------------------------------------------
# 3. The whole app crashed (and redeployed): every acknowledged write is still there


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_every_acknowledged_write_survives_a_crash(
    request: pytest.FixtureRequest,
    store: str,
    ray_instance: int,
    checkpoint_cache: Path,
    image_root: Path,
    tmp_path: Path,
    figures: dict[str, Any],
) -> None:
    """SQLite: SIGKILL of every replica, then a full serve.delete + serve.run on the same data
    folder. Redis: SIGKILL of every replica, of redis-server, which restarts from its
    append-only file (the data lives in Redis: a redeploy would add nothing to check), and of
    PostgreSQL, whose pgvector index the search uses. Search is on in both, and finds
    exactly the stored images afterwards."""
    from ray import serve

    app = f"faults-store-{store}"
    args = served_variant(checkpoint_cache, image_root, tmp_path / "data")
    full = make_test_config(checkpoint_cache, image_root).model_dump(mode="json")
    args["vqa"] = full["vqa"]
    killed = [args["ingress"], args["models"]["blip"], args["vqa"]]
    # Search on: every upload's vector is part of its write, and search must find exactly
    # the stored images after the crash.
    args["clip_image"] = full["clip_image"]
    args["search"] = {"enabled": True}
    killed.append(args["clip_image"])
    postgres: PostgresServer | None = None
    if store == "redis":
        postgres = request.getfixturevalue("postgres_server")
        args["search"] = {
            "enabled": True,
            "engine": "pgvector",
            "pgvector_dsn": postgres.dsn,
            "pgvector_table": f"crash_{uuid.uuid4().hex[:8]}",
        }
    # Serve notices a dead replica at its next health check: every 1 s here, not 10, so that
    # the crash costs seconds of test time (how long recovery takes is test 1's figure).
    for options in killed:
        options["deployment"]["health_check_period_s"] = 1.0
    redis_server = None
    if store == "redis":
        redis_server = RedisServer(aof_folder=tmp_path / "redis")
        redis_server.start()
        port = redis_server.port
        args["store"] = {"backend": "redis", "redis_host": "127.0.0.1", "redis_port": port}
    ids: list[str] = []  # acknowledged uploads, for the questions to pick from

    def write(client: httpx.Client, worker: int, n: int) -> Outcome:
        if worker < 3 or not ids:
            seed = 10_000 + 1_000 * worker + n
            files = {"image": (f"up-{seed}.png", png_bytes(seed), "image/png")}
            outcome = timed("upload", lambda: client.post("/upload", files=files), tag=seed)
            if outcome.status == 200:
                ids.append(outcome.body["image_id"])
            return outcome
        image_id = ids[(7 * n + worker) % len(ids)]
        body = {"image_id": image_id, "question": f"what is in picture {worker}-{n}"}
        return timed("question", lambda: client.post("/question", json=body), tag=body)

    phases: dict[str, float] = {}
    try:
        url = start_app(args, app, ray_instance)
        with Load(url, 6, write) as load:
            load.hold(1.5, min_requests=12)
            crashed_at = time.monotonic()
            pids = replica_pids(app)
            # ingress, blip_caption, blip_vqa, clip_image_encoder
            assert len(pids) == len(killed), pids
            for pid in pids.values():
                sigkill_replica(app, pid)
            if redis_server is not None and postgres is not None:
                redis_server.kill()
                postgres.kill()
                redis_server.start()  # replays its append-only file
                postgres.start()
            poll(
                lambda: not set(pids) & set(replica_pids(app)) and healthy(url),
                RESTART_BOUND_S,
                "the app back after SIGKILL of every replica",
                every_s=0.2,
            )
            phases["back_after_sigkill_s"] = time.monotonic() - crashed_at
            load.hold(1.0, min_requests=12)
            if store == "sqlite":
                deleted_at = time.monotonic()
                serve.delete(app)
                start_app(args, app, ray_instance)
                phases["delete_and_run_s"] = time.monotonic() - deleted_at
                load.hold(1.0, min_requests=12)
        outcomes = load.outcomes
        with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
            found = check_store(client, outcomes)
            found["by_search"] = check_search(client, found["stored_ids"])
    finally:
        serve.delete(app)
        if redis_server is not None:
            redis_server.stop()

    uploads = [o for o in outcomes if o.status == 200 and o.kind == "upload"]
    questions = [o for o in outcomes if o.status == 200 and o.kind == "question"]
    assert (found["uploads"], found["questions"]) == (len(uploads), len(questions))
    figures[f"app_crash_{store}_store"] = {
        "clients": 6,
        "requests": len(outcomes),
        "statuses": dict(Counter(str(o.status or "no answer") for o in outcomes)),
        "replicas_sigkilled": len(pids),
        "redis_server_sigkilled": redis_server is not None,
        "postgres_sigkilled": postgres is not None,
        **{name: round(seconds, 2) for name, seconds in phases.items()},
        "uploads_acknowledged": len(uploads),
        "questions_acknowledged": len(questions),
        "found_after_restart": found["uploads"] + found["questions"],
        "lost": len(uploads) + len(questions) - found["uploads"] - found["questions"],
        "stored_without_acknowledgement": found["unacknowledged"],
        "found_by_search": found.get("by_search"),
    }


def check_search(client: httpx.Client, stored_ids: set[str]) -> int:
    """Paging through a search that admits everything finds exactly the stored images (so
    every acknowledged upload, and nothing the store does not hold); how many."""
    found: list[str] = []
    body: dict[str, Any] = {"image_id": next(iter(stored_ids)), "limit": 100}
    while True:
        page = client.post("/api/search", json=body)
        assert page.status_code == 200, page.text
        found += [result["image_id"] for result in page.json()["results"]]
        if page.json()["next_cursor"] is None:
            break
        body["cursor"] = page.json()["next_cursor"]
    assert len(found) == len(set(found)), "an image found twice"
    assert set(found) == stored_ids, set(found) ^ stored_ids
    return len(found)


def healthy(url: str) -> bool:
    """Whether ``GET /healthz`` answers 200 now."""
    try:
        return httpx.get(url + "/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def check_store(client: httpx.Client, outcomes: list[Outcome]) -> dict[str, int]:
    """Every acknowledged upload and question of ``outcomes`` is in the history as it was
    answered, every stored image has its exact bytes, and nothing stored is partial; how many
    acknowledged uploads and questions were found, and how many writes are stored whole
    though their request got no 200 (allowed: the answer was lost, not the write)."""
    items: list[dict] = []
    while True:
        page = client.get("/history", params={"offset": len(items), "limit": 10})
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        if len(items) >= page.json()["total"]:
            break
    by_id = {item["image_id"]: item for item in items}
    assert len(by_id) == len(items), "an image listed twice"
    for item in items:  # acknowledged or not: whole, never half
        seed = int(item["filename"].removeprefix("up-").removesuffix(".png"))
        stored = client.get(f"/images/{item['image_id']}")
        assert stored.status_code == 200, (item, stored.text)
        assert stored.content == png_bytes(seed), f"image {item['image_id']} differs"
        assert item["caption"] and all(q["answer"] for q in item["questions"]), item

    found: Counter[str] = Counter()
    lost = []
    for outcome in outcomes:
        if outcome.status != 200:
            continue
        body = outcome.body
        item = by_id.get(body["image_id"])
        if outcome.kind == "upload":
            if item is not None and item["caption"] == body["caption"]:
                found["uploads"] += 1
                continue
        elif item is not None:
            asked = {(q["question"], q["answer"]) for q in item["questions"]}
            if (body["question"], body["answer"]) in asked:
                found["questions"] += 1
                continue
        lost.append((outcome.kind, body["image_id"], outcome.tag, item))
    assert not lost, lost
    stored_writes = len(items) + sum(len(item["questions"]) for item in items)
    return {
        "uploads": found["uploads"],
        "questions": found["questions"],
        "unacknowledged": stored_writes - found["uploads"] - found["questions"],
        "stored_ids": set(by_id),
    }
