"""Weights that are downloaded on first use: where they are looked for, and how they are fetched.

Folders searched for a weights file, in order:

1. ``model_dir=`` when given (a spec's :meth:`~xs2mask.models.ModelSpec.with_model_dir`, or
   ``xs2mask models download NAME --model-dir DIR``): only that folder;
2. otherwise ``$XS2MASK_MODEL_DIR`` when set (offline machines, read-only installs), then the
   user cache ``platformdirs.user_cache_dir("xs2mask")/models``.

A download goes to the first of those folders (``model_dir``, else ``$XS2MASK_MODEL_DIR``, else the
cache). It streams into a temporary file in the same folder, hashes it while writing, and moves it
into place with :func:`os.replace` only when its sha256 matches, so an interrupted or corrupt
download never leaves a file under the final name. ``XS2MASK_OFFLINE=1`` forbids downloads.
Each read may wait ``timeout`` seconds and the whole answer (headers and body) ``deadline``
seconds, however slowly the host sends it. URLs in messages have their secrets masked
(:func:`xs2mask.redaction.redact_url`).

Files whose sha256 nobody publishes (``sha256=None``, CloudS2Mask's Google Drive pickles) are
trusted on first download: the digest is recorded beside the file as ``<name>.sha256`` and every
later use is checked against that record.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import tempfile
import urllib.request
from pathlib import Path

from ..exceptions import WeightsError
from ..redaction import describe, redact_url

MODEL_DIR_ENV = "XS2MASK_MODEL_DIR"
OFFLINE_ENV = "XS2MASK_OFFLINE"
#: Seconds a whole download may take by default: 100 MB at 30 kB/s.
DOWNLOAD_DEADLINE = 3600.0
_BLOCK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


def cache_dir() -> Path:
    """The user cache folder for downloaded weights (not created here).

    Examples
    --------
    >>> cache_dir().name
    'models'
    """
    import platformdirs

    return Path(platformdirs.user_cache_dir("xs2mask")) / "models"


def search_dirs(model_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders a weights file is looked for in, in order (see the module doc).

    Examples
    --------
    >>> search_dirs("/opt/weights")
    [PosixPath('/opt/weights')]
    """
    if model_dir is not None:
        return [Path(model_dir)]
    env = os.environ.get(MODEL_DIR_ENV)
    return [Path(env), cache_dir()] if env else [cache_dir()]


def offline() -> bool:
    """Whether ``XS2MASK_OFFLINE`` forbids downloads."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def find(filename: str, model_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The first existing ``filename`` in :func:`search_dirs`, or None."""
    for folder in search_dirs(model_dir):
        path = folder / filename
        if path.is_file():
            return path
    return None


def record_path(path: Path) -> Path:
    """Where the sha256 of a file with no published checksum is recorded."""
    return path.with_name(path.name + ".sha256")


def is_sha256(text: object) -> bool:
    """Whether ``text`` is a hex sha256 digest (64 hex digits, either case).

    Examples
    --------
    >>> is_sha256("ab" * 32), is_sha256("abc"), is_sha256(None)
    (True, False, False)
    """
    return isinstance(text, str) and _SHA256.fullmatch(text.strip().lower()) is not None


def expected_sha256(path: Path, sha256: str | None) -> str | None:
    """The digest ``path`` must have: the published one, else the one recorded at download.

    Raises
    ------
    WeightsError
        If the published digest or the record is not a sha256 (64 hex digits).

    Examples
    --------
    >>> expected_sha256(Path("w.onnx"), "AB" * 32) == "ab" * 32
    True
    """
    if sha256:
        digest, source = sha256.strip().lower(), f"the sha256 registered for {path.name}"
        fix = "fix the model's registration (Weights(sha256=...))"
    else:
        record = record_path(path)
        if not record.is_file():
            return None
        try:
            words = record.read_text(errors="replace").split()
        except OSError as err:
            raise WeightsError(f"cannot read the sha256 record {record}: {err}") from err
        digest, source = (words[0].lower() if words else ""), f"the sha256 record {record}"
        fix = f"delete {record.name} and {path.name} and download or convert the file again with xs2mask"
    if not is_sha256(digest):
        raise WeightsError(f"{source} is not a sha256 (64 hex digits): {digest[:80]!r}; {fix}")
    return digest


def missing_message(
    filename: str,
    *,
    model: str,
    url: str | None,
    sha256: str | None,
    model_dir: str | os.PathLike[str] | None = None,
    reason: str = "",
) -> str:
    """The error text for weights that are not here: which file, from where, into which folder."""
    dirs = search_dirs(model_dir)
    url = None if url is None else redact_url(url)
    where = " or ".join(str(d) for d in dirs)
    because = f" ({reason})" if reason else ""
    lines = [f"weights file {filename!r} of model {model!r} is not in {where}{because}."]
    if url:
        digest = f"sha256 {sha256}" if sha256 else "no published sha256"
        lines.append(
            f"On a machine with internet run `xs2mask models download {model} --model-dir DIR` "
            f"(or download {url} , {digest}), then put {filename} into {dirs[0]}"
            + ("" if model_dir is not None else f" or into a folder named by ${MODEL_DIR_ENV}")
            + "."
        )
    return " ".join(lines)


def fetch(
    filename: str,
    url: str | None,
    sha256: str | None,
    *,
    model: str,
    model_dir: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
    deadline: float = DOWNLOAD_DEADLINE,
) -> Path:
    """Return the path of ``filename``, downloading it from ``url`` if no folder has it.

    ``timeout`` bounds each read of the download, ``deadline`` the whole of it (seconds).

    Raises
    ------
    WeightsError
        If the file is absent and cannot be downloaded (offline, no URL, network error,
        checksum mismatch, an HTML page instead of the file, past its deadline); the message
        names the file, its URL (secrets masked) and sha256, and the folder to put it in.

    Examples
    --------
    >>> fetch("model.safetensors", "https://example.org/model.safetensors", None,
    ...       model="my-model")  # doctest: +SKIP
    PosixPath('/home/me/.cache/xs2mask/models/model.safetensors')

    A file already in the folder is returned without any download:

    >>> _ = Path("weights").mkdir(), Path("weights/model.safetensors").write_bytes(b"...")
    >>> fetch("model.safetensors", "https://example.org/model.safetensors", None,
    ...       model="my-model", model_dir="weights")
    PosixPath('weights/model.safetensors')
    """
    found = find(filename, model_dir)
    if found is not None:
        return found
    if url is None or offline():
        reason = f"{OFFLINE_ENV} is set" if url and offline() else ""
        raise WeightsError(
            missing_message(filename, model=model, url=url, sha256=sha256, model_dir=model_dir, reason=reason)
        )
    target = search_dirs(model_dir)[0] / filename
    try:
        return download(url, target, sha256, timeout=timeout, deadline=deadline)
    except WeightsError as err:
        hint = missing_message(filename, model=model, url=url, sha256=sha256, model_dir=model_dir)
        raise WeightsError(f"{err}. {hint}") from err


def download(
    url: str, path: Path, sha256: str | None, *, timeout: float = 60.0, deadline: float = DOWNLOAD_DEADLINE
) -> Path:
    """Download ``url`` to ``path`` atomically, checking its sha256 (or recording it if None).

    ``timeout`` bounds each read, ``deadline`` the whole answer, in seconds.

    Examples
    --------
    >>> download("https://example.org/w.onnx", Path("/tmp/w.onnx"), "ab12...")  # doctest: +SKIP
    PosixPath('/tmp/w.onnx')

    Any URL urllib opens will do, ``file:`` too; without a sha256 the digest is recorded beside it:

    >>> source = Path("published.onnx")
    >>> _ = source.write_bytes(b"weights")
    >>> download(source.resolve().as_uri(), Path("models/w.onnx"), None)
    PosixPath('models/w.onnx')
    >>> record_path(Path("models/w.onnx")).read_text().split()[0][:12]
    '9a129038d9a0'
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as err:
        raise WeightsError(f"cannot write weights into {path.parent}: {err}") from err
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(url, out, timeout, deadline)
        if sha256 and digest != sha256.lower():
            raise WeightsError(
                f"download of {redact_url(url)} fails its checksum: sha256 {digest}, expected {sha256} "
                "(the host serves another file than the one this model was pinned to)"
            )
        if not sha256:
            record_path(path).write_text(f"{digest}  {path.name}\n")
        os.replace(tmp, path)
    except BaseException:
        # any failure, Ctrl-C included: no partial file may survive
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def _stream(url: str, out, timeout: float, deadline: float) -> str:
    """Copy the answer to ``out`` block by block; return its sha256."""
    from ..deadline import exceeded, urlopen

    h = hashlib.sha256()
    where = redact_url(url)
    request = urllib.request.Request(url, headers={"User-Agent": "xs2mask"})
    try:
        with urlopen(request, timeout=timeout, within=deadline) as response:
            if "text/html" in response.headers.get("Content-Type", ""):
                # Google Drive answers files it will not serve directly (quota, virus-scan notice,
                # sign-in) with an HTML page and status 200: never store that as weights.
                raise WeightsError(
                    f"{where} answered with an HTML page instead of the weights file "
                    "(a download quota or confirmation page); download it in a browser"
                )
            expected = response.headers.get("Content-Length")
            size = 0
            while block := response.read(_BLOCK):
                h.update(block)
                out.write(block)
                size += len(block)
    except WeightsError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as err:  # URLError is an OSError
        failure = err
    else:
        if expected is not None and size != int(expected):
            raise WeightsError(f"download of {where} was cut short: {size} of {expected} bytes")
        return h.hexdigest()
    # Raised out here, with no chain: urllib's errors may hold the URL and its secrets.
    if exceeded(failure):
        raise WeightsError(
            f"download of {where} did not finish within {deadline:g} s (deadline=): the host is too slow "
            "or stalls; retry later, raise the deadline, or download the file by hand"
        )
    raise WeightsError(f"download of {where} failed: {describe(failure)}")
