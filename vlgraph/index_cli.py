"""``vlgraph-index``: put a folder of images into the running service's search, or re-encode
the stored images after the encoder changed.

    vlgraph-index [DIR]      # every image under DIR (default: the image root), batched
    vlgraph-index --rebuild  # stored images another encoder indexed, encoded again

Both go through the served encoder over HTTP (``--url``, the admin key in ``API_KEY`` or
``--api-key``), show a progress bar, and are resumable: files already indexed (same bytes)
are skipped, and a rebuild only does what is left.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
from tqdm import tqdm

#: Files taken as images (the service judges each by its content, not its name).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
DEFAULT_URL = "http://127.0.0.1:8000"
#: Digests asked about per call (the service's limit is 1000).
KNOWN_CHUNK = 500
#: Batches sent before the first answer is awaited.
IN_FLIGHT = 2


class IndexingError(RuntimeError):
    """The service refused a call or cannot be reached: the message says what to do."""


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``, sorted; links that lead outside it are left out."""
    root = folder.resolve()
    found = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if not path.resolve().is_relative_to(root):
            continue
        found.append(path)
    return found


def chunks(items: list, size: int) -> Iterator[list]:
    """``items`` in consecutive lists of ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class IndexClient:
    """The service's indexing routes."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float = 300.0):
        headers = {"X-API-Key": api_key} if api_key else {}
        self._client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def known(self, digests: list[str]) -> set[str]:
        """Those of ``digests`` the service has indexed already."""
        return set(self._post("/api/admin/index/known", json={"digests": digests})["known"])

    def index(self, files: list[tuple[str, bytes]]) -> list[dict]:
        """Send one batch of (name, bytes); one outcome per file."""
        parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
        return self._post("/api/admin/index/files", files=parts)["files"]

    def rebuild(self, limit: int) -> dict:
        """Encode up to ``limit`` stored images again; ``rebuilt`` and ``remaining``."""
        return self._post("/api/admin/index/rebuild", json={"limit": limit})

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def _post(self, path: str, **request: object) -> dict:
        try:
            response = self._client.post(path, **request)  # type: ignore[arg-type]
        except httpx.HTTPError as error:
            raise IndexingError(
                f"cannot reach {self._client.base_url}: {error}; is the service running "
                "(vlgraph-serve or serve run), and is --url right?"
            ) from None
        if response.status_code != 200:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:300]
            raise IndexingError(f"{path} answered {response.status_code}: {message}")
        return response.json()


def index_folder(client: IndexClient, folder: Path, batch: int, show: bool = True) -> dict:
    """Index every image under ``folder`` not indexed yet; counts by outcome. Two batches
    are in flight at once, so the service encodes one while the next is read and sent."""
    files = image_files(folder)
    counts = {"indexed": 0, "already_indexed": 0, "refused": 0}
    with (
        tqdm(total=len(files), unit="image", desc="indexing", disable=not show) as bar,
        ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool,
    ):
        pending: deque[tuple[Future, int]] = deque()

        def finish_one() -> None:
            future, sent = pending.popleft()
            for outcome in future.result():
                counts[outcome["status"]] = counts.get(outcome["status"], 0) + 1
                if outcome["status"] == "refused":
                    tqdm.write(f"refused {outcome['name']}: {outcome['error']}", file=sys.stderr)
            bar.update(sent)

        for group in chunks(files, KNOWN_CHUNK):
            named = [(path.relative_to(folder).as_posix(), path.read_bytes()) for path in group]
            digests = [hashlib.sha256(data).hexdigest() for _, data in named]
            known = client.known(digests)
            todo = [
                item for item, digest in zip(named, digests, strict=True) if digest not in known
            ]
            counts["already_indexed"] += len(named) - len(todo)
            bar.update(len(named) - len(todo))
            for part in chunks(todo, batch):
                if len(pending) == IN_FLIGHT:
                    finish_one()
                pending.append((pool.submit(client.index, part), len(part)))
        while pending:
            finish_one()
    return counts


def rebuild(client: IndexClient, batch: int, show: bool = True) -> int:
    """Re-encode every stored image the served encoder did not index; how many."""
    first = client.rebuild(batch)
    done = first["rebuilt"]
    with tqdm(
        total=done + first["remaining"],
        initial=done,
        unit="image",
        desc="rebuilding",
        disable=not show,
    ) as bar:
        remaining = first["remaining"]
        while remaining:
            step = client.rebuild(batch)
            if step["rebuilt"] == 0:
                raise IndexingError(f"{remaining} images are left but none could be rebuilt")
            done += step["rebuilt"]
            remaining = step["remaining"]
            bar.update(step["rebuilt"])
    return done


def default_folder() -> Path:
    """The image root the service reads ``image_path`` from: ``$IMAGE_ROOT``, else ./images."""
    return Path(os.environ.get("IMAGE_ROOT") or "images")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vlgraph-index``."""
    parser = argparse.ArgumentParser(prog="vlgraph-index", description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, help="default: $IMAGE_ROOT or ./images")
    parser.add_argument("--rebuild", action="store_true", help="re-encode the stored images")
    parser.add_argument("--url", default=os.environ.get("VLGRAPH_URL") or DEFAULT_URL)
    parser.add_argument("--api-key", default=os.environ.get("API_KEY"), help="the admin key")
    parser.add_argument("--batch", type=int, default=32, help="images per call (1 to 64)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not 1 <= args.batch <= 64:
        parser.error("--batch must be between 1 and 64")
    if args.rebuild and args.folder is not None:
        parser.error("--rebuild re-encodes what is stored; give no folder with it")
    client = IndexClient(args.url, args.api_key)
    try:
        if args.rebuild:
            done = rebuild(client, args.batch, show=not args.quiet)
            print(f"rebuilt {done} images; every stored image has the served encoder's vector")
            return 0
        folder = args.folder or default_folder()
        if not folder.is_dir():
            print(f"vlgraph-index: {folder} is not a folder", file=sys.stderr)
            return 2
        counts = index_folder(client, folder, args.batch, show=not args.quiet)
        print(
            f"indexed {counts['indexed']}, already indexed {counts['already_indexed']}, "
            f"refused {counts['refused']} (of {folder})"
        )
        return 1 if counts["refused"] else 0
    except IndexingError as error:
        print(f"vlgraph-index: {error}", file=sys.stderr)
        return 1
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
