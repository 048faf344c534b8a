"""Secrets out of every message: credentials and signatures in URLs become ``***``.

URLs reach messages from users (``http://user:password@host/api``) and from providers (signed hrefs:
Planetary Computer's SAS tokens ``?st=...&se=...&sig=...``, S3 presigned ``X-Amz-Signature``).
Every error, warning and record xs2mask writes passes them through :func:`redact_url`, which keeps
what identifies the file (scheme, host, path, harmless parameters) and masks the rest:

- the user information before ``@`` (user name and password);
- the value of every query or fragment parameter whose name is a SAS field (``sig``, ``se``, ``st``,
  ``sp``, ``sv``, ``skoid``...), an AWS or Google signing field (``X-Amz-*``, ``X-Goog-*``), or names
  a token, key, secret, password, signature or credential.

It is idempotent and never raises; text without URLs comes back unchanged.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "describe", "is_secret_param", "redact_url"]

#: What a secret is replaced with.
MASK = "***"

# Azure SAS fields (account and service SAS, user delegation keys): only sig is the secret itself,
# but the others tell when and what it grants, which no log needs either.
_SAS = {"sig", "se", "st", "sp", "sv", "sr", "ss", "srt", "spr", "sip", "sdd", "ses"}
_SAS_KEYS = {"skoid", "sktid", "skt", "ske", "sks", "skv", "saoid", "suoid", "scid"}
_NAMED = re.compile(
    r"^(x-amz-|x-goog-|googleaccessid$|key$|auth|code$|expires$|policy$)"
    r"|token|secret|passw|pwd|signature|credential|api[-_]?key|session",
    re.IGNORECASE,
)
# A run of text holding a URL or a path with a query or fragment (urllib3 prints ``/search?...``).
_TOKEN = re.compile(r"""[^\s'"<>`]*(?:://|[?#])[^\s'"<>`]*""")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s]*@")
# A parameter in a query or fragment; its value ends where the next parameter starts.
_PARAM = re.compile(r"(?P<sep>^|[?&;#])(?P<key>[^=&;#?]+)=(?P<value>[^&;#]*)")
_TRAILING = ".,;:!?)]}"


def is_secret_param(name: str) -> bool:
    """Whether a query parameter of this name carries (part of) a credential.

    Examples
    --------
    >>> [is_secret_param(n) for n in ("sig", "X-Amz-Signature", "access_token", "tile", "limit")]
    [True, True, True, False, False]
    """
    from urllib.parse import unquote

    name = unquote(name).strip().lower()
    return name in _SAS or name in _SAS_KEYS or bool(_NAMED.search(name))


def _param(match: re.Match[str]) -> str:
    if match["value"] in ("", MASK) or not is_secret_param(match["key"]):
        return match.group(0)
    return f"{match['sep']}{match['key']}={MASK}"


def _token(match: re.Match[str]) -> str:
    token = match.group(0)
    # Punctuation that ends a sentence or a bracket is not part of the URL.
    core = token.rstrip(_TRAILING)
    redacted = _USERINFO.sub(rf"\g<scheme>{MASK}@", core)
    cut = min((i for i in (redacted.find("?"), redacted.find("#")) if i != -1), default=-1)
    if cut != -1:
        redacted = redacted[:cut] + _PARAM.sub(_param, redacted[cut:])
    return redacted + token[len(core) :]


def redact_url(text_or_url: str) -> str:
    """``text_or_url`` with the secrets of every URL in it replaced by ``***``.

    Works on a bare URL and on a longer message holding any number of URLs (``/vsicurl/`` paths,
    quoted or bracketed URLs included).

    Examples
    --------
    >>> redact_url("https://user:pa55@stac.example.com/api/v1?limit=10")
    'https://***@stac.example.com/api/v1?limit=10'
    >>> redact_url("cannot read '/vsicurl/https://a.blob.core.windows.net/b04.tif?st=1&se=2&sig=Zm9v%3D'.")
    "cannot read '/vsicurl/https://a.blob.core.windows.net/b04.tif?st=***&se=***&sig=***'."
    >>> redact_url("no URL here")
    'no URL here'
    """
    return _TOKEN.sub(_token, str(text_or_url))


def describe(err: BaseException, limit: int = 300) -> str:
    """One line about what went wrong, secrets redacted: ``Type: first line`` of the innermost cause.

    Libraries wrap errors (requests in urllib3's, stackstac in rasterio's): the innermost one says
    what happened.

    Examples
    --------
    >>> try:
    ...     try:
    ...         raise TimeoutError("no answer from http://u:p@host/x?token=abc")
    ...     except TimeoutError as inner:
    ...         raise RuntimeError("wrapped") from inner
    ... except RuntimeError as outer:
    ...     describe(outer)
    'TimeoutError: no answer from http://***@host/x?token=***'
    """
    seen = {id(err)}
    while err.__cause__ is not None and id(err.__cause__) not in seen:
        err = err.__cause__
        seen.add(id(err))
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return redact_url(text)[:limit]
