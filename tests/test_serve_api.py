"""The server as other programs use it: OpenAI's embeddings API through the official `openai`
client, Prometheus metrics read back with `prometheus_client`'s parser, and the readiness
probe. One server with an API key serves every test here (the key travels as the client's
Bearer token, as it would in production)."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the server needs the serve extra")
openai = pytest.importorskip("openai", reason="the OpenAI API tests need the openai client")
parser = pytest.importorskip("prometheus_client.parser")

from transformers import BertTokenizerFast  # noqa: E402

from liteclip import Index, LiteClip, preprocess  # noqa: E402

from conftest import CAT, REAL_IMAGES, make_photos  # noqa: E402
from serving import LABELS, Server, files  # noqa: E402

KEY = "k3y-for-tests"
AUTH = {"Authorization": f"Bearer {KEY}"}
VOCAB = "python/liteclip/data/bert-uncased"


@pytest.fixture(scope="module")
def keyed(checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    make_photos(root, 6)
    index = root.parent / "lib.lcx"
    Index.build(root, index, checkpoint, device="cpu")
    s = Server(
        ["--checkpoint", str(checkpoint), "--index", str(index)],
        tmp_path_factory.mktemp("log") / "serve.log",
        env={"LITECLIP_API_KEY": KEY},
    )
    yield s
    assert s.stop() == 0, s.log.read_text()


@pytest.fixture(scope="module")
def model(checkpoint):
    return LiteClip.load(checkpoint, device="cpu")


def client(server: Server, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def data_uri(path, media="image/jpeg") -> str:
    return f"data:{media};base64," + base64.b64encode(path.read_bytes()).decode()


# --- POST /v1/embeddings ---


def test_the_openai_client_embeds_texts_as_the_model_does(keyed, model):
    texts = ["a photo of a cat", "an astronaut riding a horse", "x"]
    # The client asks for base64 unless told otherwise, and decodes it itself.
    for kwargs in ({}, {"encoding_format": "float"}):
        answer = client(keyed).embeddings.create(model="anything", input=texts, **kwargs)
        assert [d.index for d in answer.data] == [0, 1, 2]
        got = np.array([d.embedding for d in answer.data])
        np.testing.assert_allclose(got, model.encode_text(texts), atol=1e-5)
    one = client(keyed).embeddings.create(model="liteclip", input="a photo of a cat")
    np.testing.assert_allclose(one.data[0].embedding, model.encode_text(texts[0])[0], atol=1e-5)


def test_data_uri_inputs_are_embedded_as_images_in_order(keyed, model):
    dog = REAL_IMAGES[1]
    inputs = ["a photo of a cat", data_uri(CAT), "a dog", data_uri(dog)]
    answer = client(keyed).embeddings.create(model="liteclip", input=inputs)
    got = np.array([d.embedding for d in answer.data])
    np.testing.assert_allclose(got[[0, 2]], model.encode_text([inputs[0], inputs[2]]), atol=1e-5)
    images = model.encode_image(preprocess([CAT, dog], image_size=model.image_size))
    np.testing.assert_allclose(got[[1, 3]], images, atol=1e-5)


def test_usage_counts_the_texts_tokens_and_model_names_the_served_one(keyed, checkpoint):
    texts = ["a photo of a cat", "Astronauts riding horses on the moon!"]
    answer = client(keyed).embeddings.create(model="text-embedding-3-small", input=texts)
    reference = BertTokenizerFast(f"{VOCAB}/vocab.txt", do_lower_case=True)
    expected = sum(len(reference(t)["input_ids"]) for t in texts)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == expected
    assert answer.model == checkpoint.name
    listed = client(keyed).models.list()
    assert [m.id for m in listed.data] == [checkpoint.name]


def test_base64_is_little_endian_float32_as_openai_sends_it(keyed, model):
    body = {"model": "m", "input": ["a cat"], "encoding_format": "base64"}
    raw = keyed.client.post("/v1/embeddings", json=body, headers=AUTH).json()
    vector = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, model.encode_text("a cat")[0], atol=1e-6)
    assert raw["object"] == "list" and raw["data"][0]["object"] == "embedding"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "m", "input": []}, "input", "non-empty"),
        ({"model": "m", "input": [[101, 2023]]}, "input", "token ids"),
        ({"model": "m", "input": ["a", ""]}, "input", "input[1] is empty"),
        ({"model": "m", "input": "a", "encoding_format": "int8"}, "encoding_format", "base64"),
        ({"model": "m", "input": "a", "dimensions": 3}, "dimensions", "dimensions"),
        ({"model": "m", "input": "data:text/plain;base64,aGk="}, "input", "data:image"),
        ({"model": "m", "input": "data:image/png;base64,@@@"}, "input", "base64"),
        ({"model": "m", "input": "data:image/png;base64," + "QUJD"}, None, "input[0]"),
        ({"model": "m", "input": ["t"] * 257}, "input", "limit"),
        ({"model": "m", "input": "w" * 301}, "input", "characters"),
    ],
)
def test_bad_embedding_requests_get_openai_errors(keyed, body, param, words):
    with pytest.raises(openai.BadRequestError) as caught:
        client(keyed).post("/embeddings", body=body, cast_to=object)
    error = caught.value.body
    assert words in error["message"], error
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    # ...and the server keeps serving.
    assert client(keyed).embeddings.create(model="m", input="a cat").data


def test_the_api_key_is_the_clients_bearer_token(keyed):
    with pytest.raises(openai.AuthenticationError) as caught:
        client(keyed, key="wrong").embeddings.create(model="m", input="a cat")
    assert "API key" in caught.value.body["message"]


def test_a_body_over_the_limit_is_refused_in_openais_shape(keyed):
    big = "data:image/png;base64," + "A" * 21_000_000
    response = keyed.client.post("/v1/embeddings", json={"model": "m", "input": big}, headers=AUTH)
    assert response.status_code == 413
    assert "limit" in response.json()["error"]["message"]


# --- GET /metrics ---


def scrape(server: Server) -> dict[tuple[str, tuple], float]:
    response = server.client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in parser.text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_count_requests_batches_and_index_rows(keyed):
    before = scrape(keyed)
    predicted = ("liteclip_requests_total", (("endpoint", "/predict"), ("status", "200")))
    refused = ("liteclip_requests_total", (("endpoint", "/search"), ("status", "401")))
    batches = ("liteclip_batch_size_count", (("kind", "predict"),))
    requests = 6
    with ThreadPoolExecutor(requests) as pool:
        answers = list(
            pool.map(
                lambda _: keyed.client.post(
                    "/predict", data=LABELS, files=files(image=CAT), headers=AUTH
                ),
                range(requests),
            )
        )
    assert all(a.status_code == 200 for a in answers)
    assert keyed.client.get("/search", params={"q": "a cat"}).status_code == 401
    after = scrape(keyed)
    assert after[predicted] - before.get(predicted, 0) == requests
    assert after[refused] - before.get(refused, 0) == 1
    # Each request was answered by one model call: the batches' sizes add up to the requests.
    sizes = ("liteclip_batch_size_sum", (("kind", "predict"),))
    assert after[sizes] - before.get(sizes, 0) == requests
    assert 1 <= after[batches] - before.get(batches, 0) <= requests
    latency = ("liteclip_request_seconds_count", (("endpoint", "/predict"),))
    assert after[latency] - before.get(latency, 0) == requests
    assert after[("liteclip_index_rows", ())] == 6
    assert after[("liteclip_queue_depth", (("kind", "predict"),))] == 0


def test_made_up_paths_share_one_series(keyed):
    for n in range(5):
        keyed.client.get(f"/no-such-page-{n}", headers=AUTH)
    names = {labels for name, labels in scrape(keyed) if name == "liteclip_requests_total"}
    endpoints = {dict(labels)["endpoint"] for labels in names}
    assert not any(e.startswith("/no-such") for e in endpoints)
    assert "other" in endpoints


def test_metrics_need_the_key_and_readiness_does_not(keyed):
    assert keyed.client.get("/metrics").status_code == 401
    ready = keyed.client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
