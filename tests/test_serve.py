"""`liteclip serve` as a client sees it, over loopback: each endpoint's answers against the
library's own calls, the bad-request matrix (each followed by a good request), the API key,
the queue limit, batching, SIGTERM, an index updated while serving, a bounded load test and
resident memory over 5,000 requests; and the page in a real browser."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx", reason="the server tests need httpx (the test extra)")
pytest.importorskip("starlette", reason="the server needs the serve extra")

from liteclip import Index, LiteClip, ZeroShotPipeline  # noqa: E402
from liteclip.serve.options import ServeOptions  # noqa: E402

from conftest import CAT, REAL_IMAGES, make_photos  # noqa: E402
from serving import LABELS, Server, files, png_claiming  # noqa: E402

DEFAULTS = ServeOptions()


@pytest.fixture(scope="module")
def library(checkpoint, tmp_path_factory):
    """An index of the five real photos and 20 generated ones."""
    root = tmp_path_factory.mktemp("photos")
    for image in REAL_IMAGES:
        (root / image.name).write_bytes(image.read_bytes())
    make_photos(root / "generated", 20)
    path = root.parent / (root.name + ".lcx")
    Index.build(root, path, checkpoint, device="cpu")
    return root, path


@pytest.fixture(scope="module")
def server(checkpoint, library, tmp_path_factory):
    s = Server(
        ["--checkpoint", str(checkpoint), "--index", str(library[1])],
        tmp_path_factory.mktemp("log") / "serve.log",
    )
    yield s
    assert s.stop() == 0, s.log.read_text()


# --- answers equal the library's ---


def test_healthz_names_model_device_and_index_size(server, checkpoint, library):
    health = server.health()
    assert health["status"] == "ok"
    assert health["model"] == str(checkpoint)
    assert health["device"] == "cpu"
    assert health["index_size"] == len(Index.open(library[1])) == 25


def test_predict_gives_the_pipelines_numbers(server, checkpoint):
    pipeline = ZeroShotPipeline(checkpoint, device="cpu")
    labels = ["a cat", "a dog", "a rocket", "a cup of coffee"]
    cases = [
        ({"labels": labels}, dict(top_k=5)),
        ({"labels": json.dumps(labels), "top_k": "2"}, dict(top_k=2)),
        (
            {"labels": labels, "hypothesis_template": "a photo of {}", "top_k": "3"},
            dict(top_k=3, hypothesis_template="a photo of {}"),
        ),
        # The deprecated short name of the field.
        (
            {"labels": labels, "template": "a picture of {}", "top_k": "3"},
            dict(top_k=3, hypothesis_template="a picture of {}"),
        ),
    ]
    for data, kwargs in cases:
        response = server.client.post("/predict", data=data, files=files(image=CAT))
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert all(p["prob"] == p["probability"] for p in predictions)  # deprecated name kept
        got = [(p["label"], p["probability"]) for p in predictions]
        expected = pipeline.predict(CAT, labels, **kwargs)
        assert [g[0] for g in got] == [e[0] for e in expected]
        np.testing.assert_allclose([g[1] for g in got], [e[1] for e in expected], atol=1e-5)


def test_search_takes_query_terms_filters_and_pages(server, library):
    root, lib = library
    index = Index.open(lib, device="cpu")
    # An indexed photo named in the query (relative to the indexed folder) is a term; the
    # result equals the library's search with that photo's path.
    q = "2:a cat on a sofa + generated/album1/p001.jpg - 0.5:a dog"
    params = {"q": q, "k": 4, "under": "generated", "offset": 1}
    results = server.client.get("/search", params=params).json()["results"]
    expected = index.search(
        [("a cat on a sofa", 2.0), Path(index.root) / "generated/album1/p001.jpg", ("a dog", -0.5)],
        k=4,
        under="generated",
        offset=1,
    )
    assert [r["path"] for r in results] == [h.path for h in expected]
    assert all(r["taken"] and r["width"] and r["thumb"].startswith("/thumb/") for r in results)
    # A term naming a file outside the index is text, never a file read on the server.
    outside = server.client.get("/search", params={"q": "/etc/hostname", "k": 2}).json()
    assert [r["path"] for r in outside["results"]] == [
        h.path for h in index.search("/etc/hostname", k=2)
    ]
    for bad in [{"after": "yesterday"}, {"sort": "date"}, {"min_score": "high"}, {"q": "a +"}]:
        response = server.client.get("/search", params={"q": "a cat", **bad})
        assert response.status_code == 400, (bad, response.text)
        assert server.client.get("/search", params={"q": "a cat"}).status_code == 200


def test_embeddings_are_the_models(server, checkpoint):
    model = LiteClip.load(checkpoint, device="cpu")
    texts = ["a photo of a cat", "an astronaut", "x"]
    got = server.client.post("/embed/text", json={"texts": texts}).json()["embeddings"]
    np.testing.assert_allclose(got, model.encode_text(texts), atol=1e-5)
    images = REAL_IMAGES[:3]
    upload = [("image", (p.name, p.read_bytes())) for p in images]
    got = server.client.post("/embed/image", files=upload).json()["embeddings"]
    np.testing.assert_allclose(got, model.encode_image(images), atol=1e-5)


def test_search_gives_the_indexs_results_with_thumbnails(server, library):
    index = Index.open(library[1], device="cpu")
    response = server.client.get("/search", params={"q": "a cat on a sofa", "k": 7})
    results = response.json()["results"]
    expected = index.search("a cat on a sofa", k=7)
    assert [r["path"] for r in results] == [p for p, _ in expected]
    np.testing.assert_allclose([r["score"] for r in results], [s for _, s in expected], atol=1e-5)
    # An indexed photo as the query finds itself first; its thumbnail is a small JPEG of it.
    response = server.client.post("/search", params={"k": 3}, files=files(image=CAT))
    top = response.json()["results"][0]
    assert Path(top["path"]).name == CAT.name and top["score"] > 0.999
    thumb = server.client.get(top["thumb"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    small = Image.open(io.BytesIO(thumb.content))
    original = Image.open(CAT)
    assert max(small.size) == DEFAULTS.thumb_size
    assert abs(small.size[0] / small.size[1] - original.size[0] / original.size[1]) < 0.02
    # It shows the same picture: the mean colour of the original, shrunk.
    mean = np.asarray(original.convert("RGB").resize(small.size)).mean(axis=(0, 1))
    assert np.abs(np.asarray(small.convert("RGB")).mean(axis=(0, 1)) - mean).max() < 4


def test_the_page_is_served_self_contained(server):
    page = server.client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    # Nothing from the internet: no absolute URLs in src/href.
    assert "http://" not in page.text and "https://" not in page.text


# --- bad requests: a fitting 4xx with a JSON error, then the server still answers ---

TOO_LONG = "x" * (DEFAULTS.max_text_chars + 1)


def bad_requests(tmp: Path):
    garbage = tmp / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    empty = tmp / "empty.jpg"
    empty.write_bytes(b"")
    bomb = tmp / "bomb.png"
    bomb.write_bytes(png_claiming(20000, 20000))
    cat = files(image=CAT)
    many = [("image", (CAT.name, CAT.read_bytes()))] * (DEFAULTS.max_images + 1)
    return [
        (
            "predict garbage image",
            "POST",
            "/predict",
            dict(data=LABELS, files=files(image=garbage)),
            400,
        ),
        (
            "predict empty image",
            "POST",
            "/predict",
            dict(data=LABELS, files=files(image=empty)),
            400,
        ),
        ("predict pixel bomb", "POST", "/predict", dict(data=LABELS, files=files(image=bomb)), 413),
        ("predict no image", "POST", "/predict", dict(data=LABELS), 400),
        (
            "predict image as text",
            "POST",
            "/predict",
            dict(data={**LABELS, "image": "cat.jpg"}),
            400,
        ),
        ("predict one label", "POST", "/predict", dict(data={"labels": ["a cat"]}, files=cat), 400),
        ("predict no labels", "POST", "/predict", dict(files=cat), 400),
        (
            "predict bad JSON labels",
            "POST",
            "/predict",
            dict(data={"labels": '["a", '}, files=cat),
            400,
        ),
        (
            "predict JSON not a list",
            "POST",
            "/predict",
            dict(data={"labels": "[1, 2]"}, files=cat),
            400,
        ),
        (
            "predict too many labels",
            "POST",
            "/predict",
            dict(data={"labels": [f"l{i}" for i in range(DEFAULTS.max_labels + 1)]}, files=cat),
            400,
        ),
        (
            "predict label too long",
            "POST",
            "/predict",
            dict(data={"labels": ["a", TOO_LONG]}, files=cat),
            400,
        ),
        (
            "predict top_k 0",
            "POST",
            "/predict",
            dict(data={**LABELS, "top_k": "0"}, files=cat),
            400,
        ),
        (
            "predict top_k word",
            "POST",
            "/predict",
            dict(data={**LABELS, "top_k": "two"}, files=cat),
            400,
        ),
        (
            "predict two template fields",
            "POST",
            "/predict",
            dict(data={**LABELS, "template": "a {}", "hypothesis_template": "b {}"}, files=cat),
            400,
        ),
        ("predict JSON body", "POST", "/predict", dict(json={"labels": ["a", "b"]}), 400),
        ("embed text not JSON", "POST", "/embed/text", dict(content=b"{texts: [}"), 400),
        ("embed text no list", "POST", "/embed/text", dict(json={"texts": "a cat"}), 400),
        ("embed text empty", "POST", "/embed/text", dict(json={"texts": []}), 400),
        ("embed text numbers", "POST", "/embed/text", dict(json={"texts": [1, 2]}), 400),
        ("embed text too long", "POST", "/embed/text", dict(json={"texts": [TOO_LONG]}), 400),
        (
            "embed text too many",
            "POST",
            "/embed/text",
            dict(json={"texts": ["a"] * (DEFAULTS.max_texts + 1)}),
            400,
        ),
        ("embed text a list body", "POST", "/embed/text", dict(json=["a"]), 400),
        ("embed image none", "POST", "/embed/image", dict(data={"x": "1"}), 400),
        ("embed image garbage", "POST", "/embed/image", dict(files=files(image=garbage)), 400),
        ("embed image too many", "POST", "/embed/image", dict(files=many), 400),
        ("search no q", "GET", "/search", dict(), 400),
        ("search empty q", "GET", "/search", dict(params={"q": "  "}), 400),
        ("search q too long", "GET", "/search", dict(params={"q": TOO_LONG}), 400),
        ("search k 0", "GET", "/search", dict(params={"q": "cat", "k": "0"}), 400),
        (
            "search k huge",
            "GET",
            "/search",
            dict(params={"q": "cat", "k": str(DEFAULTS.max_k + 1)}),
            400,
        ),
        ("search k word", "GET", "/search", dict(params={"q": "cat", "k": "ten"}), 400),
        ("search image missing", "POST", "/search", dict(data={"k": "3"}), 400),
        ("search image garbage", "POST", "/search", dict(files=files(image=garbage)), 400),
        ("thumb unknown id", "GET", "/thumb/987654", dict(), 404),
        ("thumb negative", "GET", "/thumb/-1", dict(), 404),
        ("thumb past u64", "GET", "/thumb/18446744073709551616", dict(), 404),
        ("thumb path", "GET", "/thumb/..%2F..%2Fetc%2Fpasswd", dict(), 404),
        ("thumb dots", "GET", "/thumb/1/../../../etc/passwd", dict(), 404),
        ("thumb word", "GET", "/thumb/abc", dict(), 404),
        ("unknown route", "GET", "/nothing-here", dict(), 404),
        ("wrong method", "GET", "/predict", dict(), 405),
        (
            "body over the limit",
            "POST",
            "/embed/image",
            dict(files={"image": ("big.jpg", b"\0" * (DEFAULTS.max_body_bytes + 10))}),
            413,
        ),
        (
            "streamed body over the limit",
            "POST",
            "/embed/text",
            dict(content=iter([b"x" * 1_000_000] * 21)),
            413,
        ),
    ]


def test_bad_requests_get_a_fitting_4xx_and_the_server_keeps_serving(server, tmp_path):
    good = files(image=CAT)
    for name, method, path, kwargs, status in bad_requests(tmp_path):
        response = server.client.request(method, path, **kwargs)
        assert response.status_code == status, (name, response.status_code, response.text)
        assert response.headers["content-type"] == "application/json", name
        assert response.json()["error"], name
        follow = server.client.post("/predict", data=LABELS, files=good)
        assert follow.status_code == 200, (name, follow.text)
    assert server.proc.poll() is None


def test_a_search_without_an_index_says_how_to_get_one(checkpoint, tmp_path):
    s = Server(["--checkpoint", str(checkpoint)], tmp_path / "log")
    try:
        assert s.health()["index_size"] is None
        response = s.client.get("/search", params={"q": "cat"})
        assert response.status_code == 404 and "--index" in response.json()["error"]
        assert s.client.get("/thumb/0").status_code == 404
        assert s.client.post("/predict", data=LABELS, files=files(image=CAT)).status_code == 200
    finally:
        assert s.stop() == 0


def test_an_api_key_guards_everything_but_health_and_page(checkpoint, tmp_path):
    s = Server(
        ["--checkpoint", str(checkpoint)], tmp_path / "log", env={"LITECLIP_API_KEY": "s3cret"}
    )
    try:
        assert s.client.get("/healthz").status_code == 200
        assert s.client.get("/").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = s.client.post("/embed/text", json={"texts": ["a"]}, headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"] == "Bearer"
            assert "Bearer" in response.json()["error"]
        ok = {"Authorization": "Bearer s3cret"}
        assert s.client.post("/embed/text", json={"texts": ["a"]}, headers=ok).status_code == 200
        assert s.client.get("/nothing", headers=ok).status_code == 404
        assert s.client.get("/nothing").status_code == 401
    finally:
        assert s.stop() == 0


@pytest.mark.slow  # several CLI processes or epochs: the full suite runs it
def test_bad_options_and_a_bad_checkpoint_fail_at_start(checkpoint, tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "liteclip", "serve", "--port", "0", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    missing = run("--checkpoint", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "nope" in missing.stderr
    assert run().returncode == 1  # no model at all
    bad = run("--checkpoint", str(checkpoint), "--max-batch", "0")
    assert bad.returncode == 1 and "max_batch" in bad.stderr
    assert run("--checkpoint", str(checkpoint), "--index", str(tmp_path)).returncode == 1


# --- under load ---


def test_concurrent_requests_are_batched(checkpoint, tmp_path):
    s = Server(["--checkpoint", str(checkpoint), "--max-wait-ms", "200"], tmp_path / "log")
    try:
        labels = [["a cat", "a dog"], ["a rocket", "a cup", "a face"], ["x", "y"]]
        pipeline = ZeroShotPipeline(checkpoint, device="cpu")

        def one(i):
            data = {"labels": labels[i % 3]}
            image = REAL_IMAGES[i % len(REAL_IMAGES)]
            response = s.client.post("/predict", data=data, files=files(image=image))
            return i, response

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(one, range(12)))
        for i, response in answers:
            got = [(p["label"], p["probability"]) for p in response.json()["predictions"]]
            expected = pipeline.predict(REAL_IMAGES[i % len(REAL_IMAGES)], labels[i % 3])
            assert [g[0] for g in got] == [e[0] for e in expected]
            np.testing.assert_allclose([g[1] for g in got], [e[1] for e in expected], atol=1e-5)
        stats = s.health()["batching"]["predict"]
        assert stats["requests"] == 12
        assert stats["largest"] > 1 and stats["batches"] < 12, stats
    finally:
        assert s.stop() == 0


@pytest.mark.slow  # a server of its own, filled on purpose: the full suite runs it
def test_a_full_queue_answers_503_with_retry_after(checkpoint, tmp_path):
    args = ["--checkpoint", str(checkpoint), "--max-queue", "1", "--max-batch", "1"]
    s = Server([*args, "--max-wait-ms", "0"], tmp_path / "log")
    try:
        upload = [("image", (p.name, p.read_bytes())) for p in REAL_IMAGES * 4]

        def one(_):
            return s.client.post("/embed/image", files=upload)

        with ThreadPoolExecutor(24) as pool:
            responses = list(pool.map(one, range(48)))
        codes = {r.status_code for r in responses}
        assert codes <= {200, 503}, codes
        busy = [r for r in responses if r.status_code == 503]
        assert busy, "48 concurrent requests never filled a queue of 1"
        assert busy[0].headers["retry-after"] == "1" and busy[0].json()["error"]
        assert one(0).status_code == 200
    finally:
        assert s.stop() == 0


@pytest.mark.slow  # a SIGTERM scenario: the full suite runs it
def test_sigterm_finishes_the_request_in_flight_then_exits_0(checkpoint, tmp_path):
    # A long batching wait keeps the request in the server when the signal arrives.
    s = Server(["--checkpoint", str(checkpoint), "--max-wait-ms", "3000"], tmp_path / "log")
    outcome = {}

    def request():
        outcome["response"] = s.client.post("/embed/text", json={"texts": ["a cat"]})

    worker = threading.Thread(target=request)
    worker.start()
    time.sleep(1.0)  # the request has arrived and waits for its batch to fill
    assert "response" not in outcome
    s.proc.send_signal(signal.SIGTERM)
    worker.join(60)
    assert s.proc.wait(60) == 0, s.log.read_text()
    assert outcome["response"].status_code == 200
    assert len(outcome["response"].json()["embeddings"]) == 1
    s.client.close()


def test_an_index_updated_by_another_process_is_served_without_restart(checkpoint, tmp_path):
    root = tmp_path / "photos"
    make_photos(root, 6)
    lib = tmp_path / "lib.lcx"
    Index.build(root, lib, checkpoint, device="cpu")
    s = Server(["--checkpoint", str(checkpoint), "--index", str(lib)], tmp_path / "log")
    try:
        assert s.health()["index_size"] == 6
        new = root / "new"
        new.mkdir()
        for _i, image in enumerate(REAL_IMAGES):
            (new / image.name).write_bytes(image.read_bytes())
        # Commits of one photo at a time while clients search: every answer is a whole state.
        updater = subprocess.Popen(
            [sys.executable, "-m", "liteclip", "index", str(root), "--index", str(lib)]
            + ["--batch-size", "1", "--commit-every", "1", "--device", "cpu"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        sizes = []
        while updater.poll() is None:
            response = s.client.get("/search", params={"q": "a photo", "k": 100})
            assert response.status_code == 200, response.text
            sizes.append(len(response.json()["results"]))
        assert updater.wait() == 0, updater.stderr.read()
        assert sizes == sorted(sizes) and set(sizes) <= set(range(6, 12)), sizes
        assert s.health()["index_size"] == 11
        top = s.client.post("/search", files=files(image=CAT)).json()["results"][0]
        assert top["path"] == str(new / CAT.name)
        assert s.client.get(top["thumb"]).status_code == 200
    finally:
        assert s.stop() == 0


@pytest.mark.slow
def test_load_16_clients_no_5xx_and_memory_flat_over_5000_requests(server):
    """Mixed /predict and /search from 16 clients over loopback, bounded in count and time;
    the server's resident memory after 5,000 requests is within a few MB of where it was once
    warm."""
    psutil = pytest.importorskip("psutil")
    process = psutil.Process(server.proc.pid)
    image = CAT.read_bytes()
    latencies: list[float] = []
    lock = threading.Lock()

    def client(n: int, seed: int) -> list[int]:
        codes = []
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for _ in range(n):
                start = time.perf_counter()
                if rng.random() < 0.5:
                    labels = [f"a photo of a {w}" for w in rng.choice(WORDS, 3, replace=False)]
                    r = c.post(
                        "/predict", data={"labels": labels}, files={"image": ("c.jpg", image)}
                    )
                else:
                    r = c.get("/search", params={"q": " ".join(rng.choice(WORDS, 2)), "k": 5})
                with lock:
                    latencies.append(time.perf_counter() - start)
                codes.append(r.status_code)
        return codes

    def run(total: int, seed: int) -> list[int]:
        with ThreadPoolExecutor(16) as pool:
            parts = pool.map(client, [total // 16] * 16, range(seed, seed + 16))
            return [c for part in parts for c in part]

    start = time.monotonic()
    warm = run(1008, 0)
    rss_warm = process.memory_info().rss
    rest = run(4000, 100)
    rss_end = process.memory_info().rss
    elapsed = time.monotonic() - start
    codes = warm + rest
    assert len(codes) >= 5000 and set(codes) == {200}, sorted(set(codes))
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    growth = (rss_end - rss_warm) / 2**20
    print(
        f"\n{len(codes)} requests in {elapsed:.1f}s from 16 clients: p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms; RSS warm {rss_warm / 2**20:.0f} MiB, growth {growth:+.1f} MiB"
    )
    assert growth < 25, f"resident memory grew {growth:.1f} MiB over 4,000 requests"
    assert elapsed < 600


WORDS = ["cat", "dog", "rocket", "coffee", "astronaut", "raccoon", "red", "blue", "green", "sky"]


# --- the page in a real browser (Debian's chromium through selenium and chromium-driver) ---


def chromium():
    """A headless chromium, or a skip that says what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (the test extra)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no chromium/chromedriver: `make test` installs them with apt where it can")
    options = Options()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,900")
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def test_browser_search_shows_result_thumbnails(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server.url + "/")
    wait_for(browser, lambda d: "photos" in d.find_element(By.ID, "status").text)
    browser.find_element(By.ID, "q").send_keys("a cat on a sofa", Keys.ENTER)
    expected = server.client.get("/search", params={"q": "a cat on a sofa", "k": 24}).json()
    names = [Path(r["path"]).name for r in expected["results"]]

    def thumbnails_loaded(d):
        images = d.find_elements(By.CSS_SELECTOR, "#results img.thumb")
        loaded = [i for i in images if d.execute_script("return arguments[0].naturalWidth", i)]
        return len(images) == len(names) and len(loaded) == len(names) and images

    images = wait_for(browser, thumbnails_loaded)
    shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .name")]
    assert shown == names
    assert all(Path(i.get_attribute("title")).name == n for i, n in zip(images, names))
    scores = [float(e.text) for e in browser.find_elements(By.CSS_SELECTOR, "#results .score")]
    np.testing.assert_allclose(scores, [r["score"] for r in expected["results"]], atol=1e-3)
    if os.environ.get("LITECLIP_SCREENSHOT"):
        browser.save_screenshot(os.environ["LITECLIP_SCREENSHOT"])


def test_browser_classify_shows_probability_bars(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    picker = browser.find_element(By.ID, "file")
    browser.execute_script("arguments[0].hidden = false", picker)
    picker.send_keys(str(CAT))
    labels = ["a cat", "a dog", "a rocket"]
    browser.find_element(By.ID, "labels").send_keys("\n".join(labels))
    browser.find_element(By.ID, "classify").click()
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".bar-row")) == 3)
    expected = server.client.post(
        "/predict", data={"labels": labels, "top_k": "3"}, files=files(image=CAT)
    ).json()["predictions"]
    shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".bar-row .label")]
    assert shown == [p["label"] for p in expected]
    percent = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".bar-row .prob")]
    assert percent == [f"{100 * p['prob']:.1f}%" for p in expected]
    bars = browser.find_elements(By.CSS_SELECTOR, ".bar")
    track = browser.find_element(By.CSS_SELECTOR, ".bar-track").size["width"]
    for bar, p in zip(bars, expected):
        assert abs(bar.size["width"] - p["probability"] * track) <= 2
    assert browser.find_element(By.ID, "classify-error").text == ""


@pytest.fixture(scope="module")
def dated_server(checkpoint, tmp_path_factory):
    """A server over 40 photos with EXIF dates (2019-2024) and cameras in two folders, and two
    copies of one of them (resized, recompressed) for the duplicates view."""
    from exif_photos import exif_photo

    root = tmp_path_factory.mktemp("dated")
    colours = [(200, 40, 40), (40, 180, 60), (40, 60, 200), (200, 200, 40)]
    for n in range(40):
        exif_photo(
            root / ("a" if n % 2 else "b") / f"p{n:02d}.jpg",
            colours[n % 4],
            taken=f"{2019 + n % 6}-{1 + n % 12:02d}-{1 + n % 27:02d}T10:00:00",
            make="Google" if n % 3 else "Canon",
            model="Pixel 7" if n % 3 else "EOS 80D",
            size=(64, 48),
            seed=n,
        )
    original = Image.open(root / "a" / "p01.jpg")
    (root / "copies").mkdir()
    original.resize((48, 36)).save(root / "copies" / "small.jpg", quality=70)
    original.save(root / "copies" / "again.jpg", quality=60)
    lib = root.parent / "dated.lcx"
    Index.build(root, lib, checkpoint, device="cpu")
    s = Server(["--checkpoint", str(checkpoint), "--index", str(lib)], root.parent / "log")
    s.index_path = lib
    yield s
    assert s.stop() == 0, s.log.read_text()


def set_value(browser, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    field = browser.find_element(By.ID, element_id)
    browser.execute_script(
        "arguments[0].value = arguments[1];arguments[0].dispatchEvent(new Event('change'));",
        field,
        value,
    )


def shown_tiles(browser) -> list[dict]:
    return browser.execute_script(
        """return [...document.querySelectorAll('#results figure')].map((f) => ({
             name: f.querySelector('.name').textContent,
             score: f.querySelector('.score') ? f.querySelector('.score').textContent : null,
             taken: f.querySelector('.taken') ? f.querySelector('.taken').textContent : null,
             camera: f.querySelector('.camera') ? f.querySelector('.camera').textContent : null,
             keep: f.classList.contains('keep')}))"""
    )


@pytest.mark.slow  # a server over a library of its own: the full suite runs it
def test_browser_filters_order_pages_and_shows_date_and_camera(dated_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    s = dated_server
    browser.get(s.url + "/")
    wait_for(browser, lambda d: "42 photos" in d.find_element(By.ID, "status").text)
    # Query arithmetic typed in the box, with filters and newest-first order.
    browser.find_element(By.CSS_SELECTOR, "#filters summary").click()
    for field, value in [("after", "2020-06-01"), ("before", "2024-01-31"), ("camera", "pixel")]:
        set_value(browser, field, value)
    set_value(browser, "sort", "date")
    assert browser.find_element(By.ID, "min-score").get_attribute("value") == "0.2"
    set_value(browser, "min-score", "-1")
    q = "2:a red photo + a blue photo - 0.5:green"
    browser.find_element(By.ID, "q").send_keys(q, Keys.ENTER)
    params = {"q": q, "k": 24, "after": "2020-06-01", "before": "2024-01-31", "camera": "pixel"}
    params.update(sort="date", min_score=-1)
    expected = s.client.get("/search", params=params).json()["results"]
    assert 5 < len(expected) < 24
    wait_for(browser, lambda d: len(shown_tiles(d)) == len(expected))
    tiles = shown_tiles(browser)
    assert [t["name"] for t in tiles] == [Path(r["path"]).name for r in expected]
    assert [t["taken"] for t in tiles] == [r["taken"][:10] for r in expected]
    assert all(t["camera"] == "Google Pixel 7" for t in tiles)
    dates = [t["taken"] for t in tiles]
    assert dates == sorted(dates, reverse=True) and "2020-06-01" <= min(dates)
    assert not browser.find_element(By.ID, "more").is_displayed()

    # No filters: 24 by score, then "More" for the rest, in the server's order.
    for field in ("after", "before", "camera", "min-score"):
        set_value(browser, field, "")
    set_value(browser, "sort", "score")
    browser.find_element(By.ID, "q").clear()
    browser.find_element(By.ID, "q").send_keys("a yellow photo", Keys.ENTER)
    wait_for(browser, lambda d: d.find_element(By.ID, "more").is_displayed())
    browser.find_element(By.ID, "more").click()
    wait_for(browser, lambda d: len(shown_tiles(d)) == 42)
    ranked = s.client.get("/search", params={"q": "a yellow photo", "k": 42}).json()["results"]
    assert [t["name"] for t in shown_tiles(browser)] == [Path(r["path"]).name for r in ranked]
    assert not browser.find_element(By.ID, "more").is_displayed()


@pytest.mark.slow  # a server over a library of its own: the full suite runs it
def test_browser_duplicates_view_shows_groups_with_their_keeper(dated_server, browser):
    from selenium.webdriver.common.by import By

    s = dated_server
    browser.get(s.url + "/")
    wait_for(browser, lambda d: "photos" in d.find_element(By.ID, "status").text)
    browser.find_element(By.ID, "show-duplicates").click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .group"))
    answer = s.client.get("/duplicates", params={"threshold": 0.95}).json()
    while answer["status"] == "computing":
        time.sleep(0.3)
        answer = s.client.get("/duplicates", params={"threshold": 0.95}).json()
    groups = browser.find_elements(By.CSS_SELECTOR, "#results .group")
    assert len(groups) == len(answer["groups"]) >= 1
    for element, group in zip(groups, answer["groups"]):
        names = [e.text for e in element.find_elements(By.CSS_SELECTOR, ".name")]
        assert names == [Path(p["path"]).name for p in [group["keep"], *group["duplicates"]]]
        assert "keep" in element.find_element(By.CSS_SELECTOR, "figure").get_attribute("class")
    # The copies of p01.jpg are one group, kept by the original (the most pixels).
    copies = [g for g in answer["groups"] if Path(g["keep"]["path"]).name == "p01.jpg"]
    assert copies and {"small.jpg", "again.jpg"} <= {
        Path(d["path"]).name for d in copies[0]["duplicates"]
    }


@pytest.mark.slow  # a server over a library of its own: the full suite runs it
def test_duplicates_endpoint_gives_the_librarys_groups_computed_off_the_request_path(
    dated_server,
):
    s = dated_server
    threshold = 0.97  # a threshold no other test asked for: computed afresh
    first = s.client.get("/duplicates", params={"threshold": threshold})
    assert first.status_code in (200, 202)
    if first.status_code == 202:
        assert first.json() == {"status": "computing"} and first.headers["retry-after"] == "1"
    answer = first.json()
    while answer["status"] == "computing":
        time.sleep(0.2)
        answer = s.client.get("/duplicates", params={"threshold": threshold}).json()
    index = Index.open(s.index_path, device="cpu")
    expected = index.duplicates(threshold)
    got = [
        {"keep": g["keep"]["path"], "duplicates": [d["path"] for d in g["duplicates"]]}
        for g in answer["groups"]
    ]
    assert got == expected and answer["total"] == len(expected)
    # Each tile's thumbnail is that photo's (the id a search gives it).
    for group in answer["groups"]:
        for tile in [group["keep"], *group["duplicates"]]:
            (hit,) = index.search(Path(tile["path"]), k=1)
            assert hit.path == tile["path"] and tile["thumb"] == f"/thumb/{hit.id}"
    paged = s.client.get("/duplicates", params={"threshold": threshold, "limit": 1}).json()
    assert paged["groups"] == answer["groups"][:1] and paged["total"] == answer["total"]
    for bad in [{"threshold": "high"}, {"threshold": "0"}, {"threshold": "1.5"}, {"limit": "0"}]:
        assert s.client.get("/duplicates", params=bad).status_code == 400, bad
