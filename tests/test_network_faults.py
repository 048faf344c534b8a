"""Adversarial network answers: secrets in URLs, slow lorises, malformed STAC answers, failing COG hosts.

Every server is real and on 127.0.0.1 (:class:`support.faults.FaultServer`, rustac,
:class:`support.faults.FlakyFileServer`).
Every STAC test opens the API with credentials and a signature in its URL, and every COG href is
signed: no error, warning, record or exception chain may show them (:func:`support.faults.exception_texts`).

Families: redaction of URLs; malformed landing pages; malformed item search answers; paging loops;
deadlines (a server that sends one byte at a time); HTTP errors; COG reads with signed hrefs.
"""

from __future__ import annotations

import copy
import pickle
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pystac_client  # noqa: F401  (imported before any timing: its import is slow)
import pytest
from support.faults import Fault, FaultServer, FlakyFileServer, exception_texts, self_signed_cert
from support.stac_api import serve_items

from xs2mask import classes, stac, store
from xs2mask.exceptions import ReadError, ReadWarning, StacError
from xs2mask.pipeline import Job, Load, Predict, Search, Store, mask_stac
from xs2mask.redaction import describe, is_secret_param, redact_url

SECRETS = ("pw-S3CRET", "SIGS3CRET", "TOKS3CRET", "AMZS3CRET")
QUERY = "sig=SIGS3CRET&st=2024-06-01&se=2099-01-01&sp=rl&sv=2024-05-04&skoid=TOKS3CRET"
#: Seconds per answer in the deadline tests, and what a failure may take beyond it.
TIMEOUT, MARGIN = 1.0, 1.0


def assert_no_secret(*texts_or_errors: Any) -> None:
    for thing in texts_or_errors:
        texts = exception_texts(thing) if isinstance(thing, BaseException) else [str(thing)]
        for text in texts:
            leaked = [s for s in SECRETS if s in text]
            assert not leaked, f"{leaked} leaked in: {text}"


# --------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://user:pw@host:8080/api", "http://***@host:8080/api"),
        ("https://pc.blob.core.windows.net/c/b04.tif?st=1&se=2&sp=r&sig=abc%3D",
         "https://pc.blob.core.windows.net/c/b04.tif?st=***&se=***&sp=***&sig=***"),
        ("s3://b/k.tif?X-Amz-Credential=AK%2F1&X-Amz-Signature=ff&tile=33UUU",
         "s3://b/k.tif?X-Amz-Credential=***&X-Amz-Signature=***&tile=33UUU"),
        ("https://h/cb#access_token=abc&state=1", "https://h/cb#access_token=***&state=1"),
        ("'/vsicurl/https://u:p@h/x.tif?token=abc': not recognized",
         "'/vsicurl/https://***@h/x.tif?token=***': not recognized"),
        ("Max retries exceeded with url: /search?api_key=abc&limit=2 (Caused by X)",
         "Max retries exceeded with url: /search?api_key=***&limit=2 (Caused by X)"),
        ("see (https://h/a?sig=abc).", "see (https://h/a?sig=***)."),
        ("{'href': 'https://h/a?skoid=1&sktid=2'}", "{'href': 'https://h/a?skoid=***&sktid=***'}"),
        ("https://h/a?limit=10&collections=s2", "https://h/a?limit=10&collections=s2"),
        ("a plain message, no URL; 50% done? yes #3", "a plain message, no URL; 50% done? yes #3"),
        ("http://***@host/a?sig=***", "http://***@host/a?sig=***"),
        ("ftp://me:p@ss@host/f", "ftp://***@host/f"),
    ],
)  # fmt: skip
def test_redact_url(text: str, expected: str) -> None:
    assert redact_url(text) == expected
    assert redact_url(expected) == expected  # idempotent


def test_secret_params_and_describe() -> None:
    assert all(map(is_secret_param, ["sig", "SE", "skoid", "X-Amz-Security-Token", "password", "apiKey"]))
    assert not any(map(is_secret_param, ["limit", "bbox", "datetime", "collections", "tile"]))
    try:
        try:
            raise ConnectionError(f"refused: http://a:pw-S3CRET@h/x?{QUERY}")
        except ConnectionError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError as err:
        line = describe(err)
    assert line.startswith("ConnectionError: refused: http://***@h/x?sig=***")
    assert_no_secret(line)


# --------------------------------------------------------------------------- a fake STAC API

FEATURE = {
    "type": "Feature",
    "stac_version": "1.0.0",
    "id": "S2A_MSIL2A_20240601",
    "geometry": {"type": "Polygon", "coordinates": [[[30, -3], [31, -3], [31, -2], [30, -2], [30, -3]]]},
    "bbox": [30, -3, 31, -2],
    "properties": {"datetime": "2024-06-01T08:00:00Z"},
    "links": [],
    "assets": {"B04": {"href": f"https://acc.blob.core.windows.net/c/b04.tif?{QUERY}"}},
}


def landing(**changes: Any) -> dict[str, Any]:
    doc = {
        "type": "Catalog",
        "id": "fake",
        "description": "fake STAC API",
        "stac_version": "1.0.0",
        "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"],
        "links": [
            {"rel": "self", "href": "{root}/"},
            {"rel": "root", "href": "{root}/"},
            {"rel": "search", "href": "{root}/search", "method": "GET", "type": "application/geo+json"},
            {"rel": "search", "href": "{root}/search", "method": "POST", "type": "application/geo+json"},
        ],
    }
    return {**doc, **changes}


def page(*features: Any, links: list | None = None) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features), "links": links or []}


def feature(**changes: Any) -> dict[str, Any]:
    """FEATURE with fields replaced; a value of None removes the field (``properties.datetime`` too)."""
    out = copy.deepcopy(FEATURE)
    for key, value in changes.items():
        target, name = (out["properties"], "datetime") if key == "datetime" else (out, key)
        if value is None:
            target.pop(name)
        else:
            target[name] = value
    return out


def secret_url(server: FaultServer) -> str:
    """The API root with credentials and a signature: what a user with a private API passes."""
    return server.url.replace("://", "://alice:pw-S3CRET@") + f"/?{QUERY}"


def search_fails(routes: dict[str, Fault], **kw: Any) -> tuple[StacError, FaultServer, float]:
    """Search a FaultServer with ``routes``; return the StacError (exact type), the server and the time."""
    with FaultServer(routes) as server:
        start = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(StacError) as info:
                stac.search(
                    secret_url(server), collections="sentinel-2-l2a", **{"retries": 0, "sign": False, **kw}
                )
            elapsed = time.monotonic() - start
    err = info.value
    assert type(err) is StacError
    assert f"127.0.0.1:{server.url.rsplit(':', 1)[1]}" in str(err)  # names the URL...
    assert_no_secret(err, *(str(w.message) for w in caught))  # ...without its secrets
    return err, server, elapsed


def test_a_well_formed_answer_is_accepted() -> None:
    """The control: the checks below refuse what is malformed, not what is merely unusual."""
    routes = {
        "/": Fault.json(landing()),
        "/search": Fault.json(page(FEATURE, feature(id="b", bbox=[30, -3, 0, 31, -2, 9]))),
    }
    with FaultServer(routes) as server:
        items = stac.search(
            secret_url(server), collections="sentinel-2-l2a", retries=0, timeout=TIMEOUT, sign=False
        )
    assert [i.id for i in items] == [FEATURE["id"], "b"]
    assert items[0].assets["B04"].href == FEATURE["assets"]["B04"]["href"]  # data are not redacted


# --------------------------------------------------------------------------- malformed landing pages

LANDING_FAULTS = {
    "not json": (Fault(b"Service moved", content_type="text/plain"), "not JSON"),
    "html 200": (
        Fault(b"<!DOCTYPE html><html><body>Sign in</body></html>", content_type="text/html"),
        "HTML page",
    ),
    "html no doctype": (Fault(b"  <html><head><title>Portal</title></head></html>"), "HTML page"),
    "empty body": (Fault(b""), "not JSON"),
    "json array": (Fault.json([landing()]), "JSON array"),
    "json string": (Fault.json("catalog"), "JSON string"),
    "json null": (Fault.json(None), "JSON null"),
    "json number": (Fault.json(3), "JSON number"),
    "empty object": (Fault.json({}), "not a STAC API"),
    "a collection": (Fault.json({**landing(), "type": "Collection"}), "not a STAC API"),
    "no item search": (
        Fault.json(landing(conformsTo=["https://api.stacspec.org/v1.0.0/core"])),
        "not a STAC API",
    ),
    "not utf-8": (Fault(b'{"id": "\xff\xfe"}'), "failed"),
}


@pytest.mark.parametrize("case", LANDING_FAULTS)
def test_malformed_landing_page_is_a_stac_error(case: str) -> None:
    fault, expected = LANDING_FAULTS[case]
    err, _, _ = search_fails({"/": fault})
    assert expected in str(err)
    assert "http://***@127.0.0.1" in str(err) and "sig=***" in str(err)


# --------------------------------------------------------------------------- malformed search answers

SEARCH_FAULTS = {
    "not json": (Fault(b"OK", content_type="text/plain"), "not JSON"),
    "html 200": (Fault(b"<html><body>Rate limited</body></html>", content_type="text/html"), "HTML page"),
    "empty object": (Fault.json({}), "instead of a FeatureCollection"),
    "json array": (Fault.json([FEATURE]), "JSON array"),
    "a feature": (Fault.json(FEATURE), "of type 'Feature' instead of a FeatureCollection"),
    "features not a list": (Fault.json({**page(), "features": {"0": FEATURE}}), "without a list of features"),
    "links not a list": (Fault.json(page(FEATURE, links={"next": "x"})), "links are not a list"),
    "feature not an object": (Fault.json(page("S2A")), "feature 0 is not a GeoJSON Feature"),
    "feature without id": (Fault.json(page(feature(id=None))), "has no id"),
    "no geometry": (
        Fault.json(page(FEATURE, feature(geometry=None))),
        "feature 1 (S2A_MSIL2A_20240601) has no geometry",
    ),
    "null geometry": (Fault.json(page({**FEATURE, "geometry": None})), "has no geometry"),
    "geometry without coordinates": (
        Fault.json(page(feature(geometry={"type": "Polygon"}))),
        "has no geometry",
    ),
    "no bbox": (Fault.json(page(feature(bbox=None))), "has no bbox"),
    "bbox of 3": (Fault.json(page(feature(bbox=[30, -3, 31]))), "has no bbox"),
    "bbox of strings": (Fault.json(page(feature(bbox=["30", "-3", "31", "-2"]))), "has no bbox"),
    "no datetime": (Fault.json(page(feature(datetime=None))), "has no datetime"),
    "garbage datetime": (Fault.json(page(feature(datetime="yesterday"))), "has no datetime"),
    "no properties": (Fault.json(page(feature(properties=None))), "has no datetime"),
    "no assets": (Fault.json(page(feature(assets=None))), "has no assets"),
    "empty assets": (Fault.json(page(feature(assets={}))), "has no assets"),
    "asset without href": (
        Fault.json(page(feature(assets={"B04": {"type": "image/tiff"}}))),
        "without an href",
    ),
}


@pytest.mark.parametrize("case", SEARCH_FAULTS)
def test_malformed_search_answer_is_a_stac_error(case: str) -> None:
    fault, expected = SEARCH_FAULTS[case]
    err, server, _ = search_fails({"/": Fault.json(landing()), "/search": fault})
    assert expected in str(err)
    assert f"{server.url}/search" in str(err) and "API root" in str(err)


# --------------------------------------------------------------------------- paging loops


def _next(href: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"rel": "next", "href": href, "type": "application/geo+json", **extra}]


LOOPS = {
    "next is itself (GET)": {
        "/search": Fault.json(page(FEATURE, links=_next("{root}/search?token=TOKS3CRET")))
    },
    "next is itself (POST body)": {
        "/search": Fault.json(
            page(FEATURE, links=_next("{root}/search", method="POST", body={"token": "same"}))
        )
    },
    "two pages in a circle": {
        "/search": Fault.json(page(FEATURE, links=_next("{root}/search?page=b"))),
        "/search?page=b": Fault.json(page(feature(id="b"), links=_next("{root}/search?page=a"))),
        "/search?page=a": Fault.json(page(feature(id="a"), links=_next("{root}/search?page=b"))),
    },
    "new tokens, same items": {
        "/search": Fault.json(page(FEATURE, links=_next("{root}/search?token=1"))),
        "/search?token=1": Fault.json(page(FEATURE, links=_next("{root}/search?token=2"))),
    },
}


@pytest.mark.parametrize("case", LOOPS)
def test_paging_loops_end_in_a_stac_error(case: str) -> None:
    err, server, elapsed = search_fails({"/": Fault.json(landing()), **LOOPS[case]})
    assert "paging loop" in str(err)
    assert len([p for m, p in server.paths if p.startswith("/search")]) <= 4 and elapsed < 5


def test_max_items_stops_before_a_loop_matters() -> None:
    routes = {"/": Fault.json(landing()), **LOOPS["next is itself (GET)"]}
    with FaultServer(routes) as server:
        items = stac.search(
            secret_url(server), collections="c", max_items=1, retries=0, timeout=TIMEOUT, sign=False
        )
    assert len(items) == 1


# --------------------------------------------------------------------------- deadlines

SLOW = {
    "landing page, headers and body": {"/": Fault.json(landing(), drip_s=0.05)},
    "landing page, body only": {"/": Fault.json(landing(), drip_s=0.05, drip_body_only=True)},
    "search answer, headers and body": {
        "/": Fault.json(landing()),
        "/search": Fault.json(page(FEATURE), drip_s=0.05),
    },
    "search answer, body only": {
        "/": Fault.json(landing()),
        "/search": Fault.json(page(FEATURE), drip_s=0.05, drip_body_only=True),
    },
    "one byte per half second": {"/": Fault.json(landing(), drip_s=0.5)},
    "silent": {"/": Fault.json(landing(), delay_s=3)},
}


@pytest.mark.parametrize("case", SLOW)
def test_slow_loris_fails_within_the_timeout(case: str) -> None:
    err, _, elapsed = search_fails(SLOW[case], timeout=TIMEOUT)
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + MARGIN
    assert f"within {TIMEOUT:g} s" in str(err) and "timeout=" in str(err)


def test_slow_loris_deadline_holds_per_attempt() -> None:
    """A timeout before the headers are in is retried (urllib3), each attempt with its own deadline."""
    err, server, elapsed = search_fails(SLOW["landing page, headers and body"], timeout=TIMEOUT, retries=1)
    assert len(server.paths) == 2
    assert 2 * TIMEOUT * 0.9 <= elapsed < 2 * TIMEOUT + MARGIN
    assert "retries=1" in str(err)


def test_the_deadline_is_per_answer_not_per_search() -> None:
    """Six answers, each well within the deadline, together far longer than it."""
    pages = {
        f"/search?page={i}": Fault.json(
            page(feature(id=f"i{i}"), links=_next(f"{{root}}/search?page={i + 1}") if i < 5 else []),
            delay_s=0.4,
        )
        for i in range(1, 6)
    }
    first = Fault.json(page(FEATURE, links=_next("{root}/search?page=1")), delay_s=0.4)
    with FaultServer({"/": Fault.json(landing()), "/search": first, **pages}) as server:
        start = time.monotonic()
        items = stac.search(secret_url(server), collections="c", retries=0, timeout=TIMEOUT, sign=False)
        assert time.monotonic() - start > 2 * TIMEOUT
    assert len(items) == 6


# --------------------------------------------------------------------------- over HTTPS, as providers serve


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("cryptography")
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def trusted(tls: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The test certificate, trusted by requests for this test."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls[0]))
    return tls


def test_https_answer_is_accepted(trusted: tuple[Path, Path]) -> None:
    routes = {"/": Fault.json(landing()), "/search": Fault.json(page(FEATURE))}
    with FaultServer(routes, tls=trusted) as server:
        assert server.url.startswith("https://")
        items = stac.search(secret_url(server), collections="c", retries=0, timeout=TIMEOUT, sign=False)
    assert [i.id for i in items] == [FEATURE["id"]]


@pytest.mark.parametrize("case", ["landing page, headers and body", "search answer, body only"])
def test_https_slow_loris_fails_within_the_timeout(trusted: tuple[Path, Path], case: str) -> None:
    with FaultServer(SLOW[case], tls=trusted) as server:
        start = time.monotonic()
        with pytest.raises(StacError, match=f"within {TIMEOUT:g} s") as info:
            stac.search(secret_url(server), collections="c", retries=0, timeout=TIMEOUT, sign=False)
        assert TIMEOUT * 0.9 <= time.monotonic() - start < TIMEOUT + MARGIN
    assert_no_secret(info.value)


def test_untrusted_certificate_is_a_stac_error(tls: tuple[Path, Path]) -> None:
    refused = pytest.raises(StacError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed")
    with FaultServer({"/": Fault.json(landing())}, tls=tls) as server, refused as info:
        stac.search(secret_url(server), collections="c", retries=0, timeout=TIMEOUT, sign=False)
    assert "https://***@127.0.0.1" in str(info.value)
    assert_no_secret(info.value)


# --------------------------------------------------------------------------- HTTP errors


def test_server_error_is_retried_then_a_stac_error() -> None:
    err, server, _ = search_fails({"/": Fault.json({"code": 500}, status=500)}, retries=2)
    assert len(server.paths) == 3 and "failed after 2 retries" in str(err)


def test_error_page_echoing_the_signed_url_is_redacted() -> None:
    echo = f"denied: http://alice:pw-S3CRET@127.0.0.1/?{QUERY}".encode()
    err, _, _ = search_fails({"/": Fault(echo, status=401, content_type="text/plain")})
    assert "denied: http://***@127.0.0.1/?sig=***" in str(err)


def test_missing_search_endpoint_is_a_stac_error() -> None:
    err, _, _ = search_fails({"/": Fault.json(landing())})  # /search answers 404
    assert "404" in str(err) or "not found" in str(err).lower()


def test_connection_refused_names_the_url_without_secrets(unreachable_url: str) -> None:
    url = unreachable_url.replace("http://", "http://alice:pw-S3CRET@") + f"/?{QUERY}"
    with pytest.raises(StacError, match=r"http://\*\*\*@127\.0\.0\.1:\d+/\?sig=\*\*\*") as info:
        stac.search(url, collections="c", retries=0, timeout=TIMEOUT, sign=False)
    assert_no_secret(info.value)


# --------------------------------------------------------------------------- COG reads with signed hrefs

MODEL = "ukis-csmask-4b-l2a"


def _signed(item: dict, cog_server: FlakyFileServer, tag: str) -> dict:
    """``item``, its assets served by ``cog_server`` under signed hrefs (``tag`` keeps GDAL's cache out)."""
    item = copy.deepcopy(item)
    for asset in item["assets"].values():
        asset["href"] = f"{cog_server.href(asset['href'])}?{tag}&{QUERY}"
    return item


def _read_error(item: dict, **kw: Any) -> tuple[ReadError, float]:
    start = time.monotonic()
    with pytest.raises(ReadError) as info:
        stac.load([item], model=MODEL, **kw).compute()
    err = info.value
    assert type(err) is ReadError and err.asset in {"B02", "B03", "B04", "B08"}
    assert "sig=***" in err.href and "sig=***" in str(err)
    back = pickle.loads(pickle.dumps(err))  # as it crosses from a Dask worker
    assert_no_secret(err, back, err.href, err.reason, back.href)
    return err, time.monotonic() - start


def test_read_error_of_a_failing_host_hides_the_signature(stac_pc, cog_server) -> None:
    cog_server.kind, cog_server.faults = "503", -1
    err, _ = _read_error(
        _signed(stac_pc.item("timeseries_0"), cog_server, "503"), read_retries=0, read_timeout=2
    )
    assert not err.permanent


def test_read_error_of_a_missing_file_hides_the_signature(stac_pc, cog_server) -> None:
    item = stac_pc.item("timeseries_0")
    cog_server.missing.add(str(Path(item["assets"]["B08"]["href"]).resolve().relative_to(cog_server.root)))
    err, _ = _read_error(_signed(item, cog_server, "404"), read_retries=2, read_timeout=2)
    assert err.permanent and err.asset == "B08"


def test_cog_read_from_a_slow_loris_ends_at_the_read_timeout(stac_pc, cog_server) -> None:
    """GDAL_HTTP_TIMEOUT is curl's CURLOPT_TIMEOUT: a limit on the whole answer, not on each read."""
    cog_server.kind, cog_server.faults, cog_server.stall_s = "drip", -1, 0.05
    err, elapsed = _read_error(
        _signed(stac_pc.item("timeseries_0"), cog_server, "drip"), read_retries=0, read_timeout=1
    )
    assert cog_server.faulty() >= 1 and not err.permanent
    assert elapsed < 4  # files opened in parallel, one 1 s timeout each; the drip alone would last minutes


def test_pipeline_records_and_warns_without_the_signature(stac_pc, flaky, cog_server, tmp_path) -> None:
    bad = stac_pc.groups["timeseries"][1]
    items = [_signed(i, flaky, "pipeline") for i in stac_pc.items if i["id"] == bad]
    cog_server.kind, cog_server.faults, cog_server.only = "503", -1, bad
    out = tmp_path / "m.zarr"
    with serve_items(items, stac_pc.collection_docs) as url:
        job = Job(Search(url, stac_pc.collections[:1], stac_pc.bbox, "2020-06-13"), Store(str(out)),
                  load=Load(read_retries=0, on_read_error="nodata"), predict=Predict(MODEL))  # fmt: skip
        with pytest.warns(ReadWarning) as caught:
            mask_stac(job, sign=False)
    with pytest.warns(ReadWarning) as reopened:
        masks = store.open_masks(str(out))
    errors = masks.attrs["xs2mask_read_errors"]
    assert [e["item"] for e in errors] == [bad] and "sig=***" in errors[0]["href"]
    assert np.all(masks.mask.values == classes.NODATA)
    assert_no_secret(repr(errors), *(str(w.message) for w in [*caught, *reopened]))
