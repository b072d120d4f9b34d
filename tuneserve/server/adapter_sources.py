"""Where an adapter named in a request comes from when it is not loaded yet (just-in-time, as LoRAX).

- `NAME`: the directory NAME under an adapter root (`--adapter-root`, default $TUNESERVE_HOME/adapters).
- `hf://ORG/REPO[@REVISION]`: a Hugging Face Hub repository, fetched with huggingface_hub into its
  own cache (with HF_HUB_OFFLINE=1, from that cache only).
- `https://HOST/PATH.tar.gz` (or `.tgz`, `.zip`; `http://` too): an archive under one of the
  server's `--adapter-url-prefix`es (none by default: a request cannot make the server fetch an
  arbitrary URL), downloaded with a size cap into the adapter cache ($TUNESERVE_HOME/adapter-cache,
  one directory per URL) and unpacked with no path leaving it. Redirects are followed only to URLs
  under the same prefixes.
- `merge:[METHOD:]A[*W]+B[*W]...`: adapters merged per request (adapter_merge.py), built into the
  adapter cache from the components' own sources.

Every source ends in a local directory that then goes through the registry's snapshot and checks,
like an admin load. A reference no source knows is not an adapter (404 model_not_found).
"""

import hashlib
import posixpath
import re
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from tuneserve.server.adapter_checks import SAFE_NAME, AdapterError, shown
from tuneserve.server.adapter_merge import MergeRecipe, build_merge, check_components, merge_key, parse_merge

HF_REF = re.compile(r"^hf://([A-Za-z0-9][\w.-]{0,95})/([A-Za-z0-9][\w.-]{0,95})(?:@([\w./-]{1,100}))?$")
URL_REF = re.compile(r"^https?://[^\s/$.?#][^\s]{0,2000}\.(tar\.gz|tgz|zip)$")
ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "tuneserve.json"]


class AdapterFetchError(AdapterError):
    """A remote adapter that cannot be fetched (not found, unreachable): the client's reference is wrong."""

    code = "adapter_fetch_failed"


class AdapterUrlNotAllowedError(AdapterError):
    code = "adapter_url_not_allowed"


def is_allowed_url(url: str, prefixes: list[str]) -> bool:
    """`url` starts with one of `prefixes` and cannot step out of it (no `..`, no escapes, no user)."""
    parts = urlsplit(url)
    if parts.username or parts.password or "%" in url or "\\" in url or parts.path != posixpath.normpath(parts.path):
        return False
    return any(url.startswith(prefix) for prefix in prefixes)


def check_url_prefix(prefix: str) -> str:
    """A prefix an operator allows: scheme, host and a path ending in `/` (so `https://host` cannot match `https://host.evil`)."""
    parts = urlsplit(prefix)
    if parts.scheme not in ("http", "https") or not parts.hostname or not parts.path.endswith("/"):
        raise ValueError(f"{prefix!r}: expected http(s)://HOST[:PORT]/PATH/ (ending in /)")
    return prefix


def source_kind(ref: str) -> str:
    return "merge" if ref.startswith("merge:") else "hf" if HF_REF.match(ref) else "url" if URL_REF.match(ref) else "root"


def is_resolvable(ref: str, roots: list[Path], url_prefixes: list[str] = ()) -> bool:
    """Whether `ref` names an adapter some source can provide (without fetching it); a URL outside
    `url_prefixes` is an error, not an unknown model."""
    if ref.startswith("merge:"):
        recipe = parse_merge(ref)
        return all(is_resolvable(name, roots, url_prefixes) and not name.startswith("merge:") for name in recipe.names)
    if URL_REF.match(ref):
        if not is_allowed_url(ref, url_prefixes):
            raise AdapterUrlNotAllowedError(f"{shown(ref)}: this server fetches adapters only from URLs under its "
                                            "--adapter-url-prefix (none set: no URLs)", param="model")
        return True
    if HF_REF.match(ref):
        return True
    return bool(SAFE_NAME.match(ref)) and any((root / ref / "adapter_config.json").is_file() for root in roots)


def fetch(ref: str, roots: list[Path], cache_dir: Path, max_bytes: int, base_dir: Path | None = None,
          url_prefixes: list[str] = ()) -> Path:
    """The local directory of `ref`, fetched (or built, for a merge on `base_dir`) if need be.
    Blocking: run it in a thread."""
    if (recipe := parse_merge(ref)) is not None:
        return _merged(recipe, roots, cache_dir, max_bytes, base_dir, url_prefixes)
    if match := HF_REF.match(ref):
        return _from_hub(f"{match[1]}/{match[2]}", match[3])
    if URL_REF.match(ref):
        is_resolvable(ref, roots, url_prefixes)  # raises outside the prefixes
        return _from_url(ref, cache_dir, max_bytes, url_prefixes)
    for root in roots:
        path = (root / ref).resolve()
        if path.is_relative_to(root.resolve()) and (path / "adapter_config.json").is_file():
            return path
    raise AdapterError(f"no adapter named {ref!r} under the adapter roots", param="model")


def _merged(recipe: MergeRecipe, roots: list[Path], cache_dir: Path, max_bytes: int, base_dir: Path, url_prefixes: list[str]) -> Path:
    dirs = {name: fetch(name, roots, cache_dir, max_bytes, url_prefixes=url_prefixes) for name in recipe.names}
    check_components(recipe, dirs)
    target = cache_dir / merge_key(recipe, dirs)
    if not (target / "adapter_config.json").is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        build_merge(recipe, dirs, base_dir, target)
    target.touch()
    return target


def _from_hub(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ADAPTER_FILES))
    except (LocalEntryNotFoundError, RepositoryNotFoundError) as e:
        raise AdapterFetchError(f"hf://{repo_id}: not found on the Hub or in its cache ({type(e).__name__})", param="model") from None
    except (HfHubHTTPError, OSError) as e:
        raise AdapterFetchError(f"hf://{repo_id}: cannot fetch it: {str(e)[:200]}", param="model") from None


def _from_url(url: str, cache_dir: Path, max_bytes: int, url_prefixes: list[str]) -> Path:
    target = cache_dir / hashlib.sha256(url.encode()).hexdigest()[:32]
    if (found := _adapter_dir(target)) is not None:
        target.touch()  # most recently used, for the cache's byte budget
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as work:
        archive = Path(work) / ("archive.zip" if url.endswith(".zip") else "archive.tar.gz")
        _download(url, archive, max_bytes, url_prefixes)
        unpacked = Path(work) / "unpacked"
        _unpack(archive, unpacked, max_bytes)
        if _adapter_dir(unpacked) is None:
            raise AdapterError(f"{shown(url)}: the archive holds no adapter_config.json", param="model")
        shutil.rmtree(target, ignore_errors=True)
        unpacked.rename(target)
    return _adapter_dir(target)


def _download(url: str, out: Path, max_bytes: int, url_prefixes: list[str], max_redirects: int = 5) -> None:
    import httpx

    size = 0
    location = url
    try:
        with httpx.Client(timeout=60, follow_redirects=False) as client:
            for _ in range(max_redirects + 1):
                with client.stream("GET", location) as response:
                    if response.is_redirect:
                        location = urljoin(location, response.headers.get("location", ""))
                        if not is_allowed_url(location, url_prefixes):
                            raise AdapterUrlNotAllowedError(f"{shown(url)}: redirects outside the server's --adapter-url-prefix", param="model")
                        continue
                    if response.status_code != 200:
                        raise AdapterFetchError(f"{shown(url)}: HTTP {response.status_code}", param="model")
                    with open(out, "wb") as f:
                        for chunk in response.iter_bytes(1 << 20):
                            size += len(chunk)
                            if size > max_bytes:
                                raise AdapterError(f"{shown(url)}: larger than {max_bytes} bytes, the most an adapter of this "
                                                   "server's --max-lora-rank can take for this model", param="model")
                            f.write(chunk)
                    return
        raise AdapterFetchError(f"{shown(url)}: more than {max_redirects} redirects", param="model")
    except httpx.HTTPError as e:
        raise AdapterFetchError(f"{shown(url)}: cannot download it: {type(e).__name__}", param="model") from None


def _unpack(archive: Path, out: Path, max_bytes: int) -> None:
    """Regular files only, inside `out`, at most `max_bytes` in all (a zip bomb stops there)."""
    out.mkdir()
    try:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as z:
                members = [m for m in z.infolist() if not m.is_dir()]
                if sum(m.file_size for m in members) > max_bytes:
                    raise AdapterError(f"{archive.name}: unpacks to more than {max_bytes} bytes", param="model")
                for m in members:
                    target = (out / m.filename).resolve()
                    if not target.is_relative_to(out.resolve()):
                        raise AdapterError(f"{archive.name}: {m.filename!r} leaves the archive's directory", param="model")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(m))
        else:
            with tarfile.open(archive) as t:
                members = [m for m in t.getmembers() if m.isfile()]
                if sum(m.size for m in members) > max_bytes:
                    raise AdapterError(f"{archive.name}: unpacks to more than {max_bytes} bytes", param="model")
                t.extractall(out, members=members, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
        raise AdapterError(f"{archive.name}: not a valid archive ({type(e).__name__}: {str(e)[:120]})", param="model") from None


def _adapter_dir(root: Path) -> Path | None:
    """The directory holding adapter_config.json: `root` itself or one level down."""
    if (root / "adapter_config.json").is_file():
        return root
    found = [p for p in root.glob("*/adapter_config.json")] if root.is_dir() else []
    return found[0].parent if len(found) == 1 else None


def prune_cache(cache_dir: Path, max_bytes: int) -> None:
    """Drop the least recently used downloads until the cache fits its byte budget."""
    entries = [(p.stat().st_mtime, p) for p in cache_dir.iterdir() if p.is_dir()] if cache_dir.is_dir() else []
    sizes = {p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for _, p in entries}
    total = sum(sizes.values())
    for _, path in sorted(entries):
        if total <= max_bytes:
            break
        shutil.rmtree(path, ignore_errors=True)
        total -= sizes[path]
