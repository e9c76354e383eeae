"""The playground in a real headless Chromium against the real service: draw or upload digits and
see them classified, get next-word suggestions and stream completions, generate images, read the
model cards, watch the live metrics, use an API key, open /docs and /redoc offline. The page's
timing-sensitive parts (debounced suggestions, a completion visibly streaming token by token, Stop)
are also checked against the contract stub (tests/helpers/lm_contract.py), whose tokens come at a known pace."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import httpx
import pytest
from conftest import API_KEY, Pages, Service
from helpers.lm_contract import PIECES, TOKEN_DELAY_S, stub_server
from PIL import Image, ImageDraw
from playwright.sync_api import Locator, Page, Request, expect

pytestmark = pytest.mark.browser

Shot = Callable[[Page | Locator, str], Path]
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()[:10]

# Strokes on the pad, in fractions of its size (x, y), drawn as a person would.
ONE = [[(0.52, 0.18), (0.5, 0.82)]]
SEVEN = [[(0.26, 0.22), (0.74, 0.22), (0.46, 0.84)]]
ZERO = [[(0.5, 0.18), (0.3, 0.3), (0.26, 0.55), (0.36, 0.78), (0.54, 0.82), (0.7, 0.68),
         (0.74, 0.42), (0.64, 0.22), (0.5, 0.18)]]  # fmt: skip


def open_playground(pages: Pages, service: Service) -> Page:
    page = pages.open(service.url + "/", api_key=API_KEY)
    expect(page).to_have_url(re.compile(r"/playground$"))
    expect(page.locator("body")).to_have_attribute("data-ready", "yes")
    return page


def draw(page: Page, strokes: list[list[tuple[float, float]]]) -> None:
    page.locator("#pad").scroll_into_view_if_needed()
    box = page.locator("#pad").bounding_box()
    assert box is not None

    def at(point: tuple[float, float]) -> tuple[float, float]:
        return box["x"] + point[0] * box["width"], box["y"] + point[1] * box["height"]

    for stroke in strokes:
        page.mouse.move(*at(stroke[0]))
        page.mouse.down()
        for (x0, y0), (x1, y1) in pairwise(stroke):
            for i in range(1, 9):
                page.mouse.move(*at((x0 + (x1 - x0) * i / 8, y0 + (y1 - y0) * i / 8)))
        page.mouse.up()


def log_tokens(page: Page) -> None:
    """window.tokenLog: [model, length of its text, time in ms] at each streamed piece."""
    page.evaluate(
        """() => { window.tokenLog = [];
        document.querySelectorAll('#lm-results .lm').forEach(card =>
          card.addEventListener('token', () => window.tokenLog.push([card.dataset.model,
            card.querySelector('.generated').textContent.length, performance.now()])));
    }"""
    )


def asks_for(request: Request, text: str) -> bool:
    """Whether a request asks a model for the next word after exactly `text`."""
    return request.url.endswith("/next-word") and (request.post_data_json or {}).get("text") == text


def classifier_card(page: Page, model: str) -> Locator:
    return page.locator(f'#classify-results [data-model="{model}"]')


def test_api_key_is_asked_for_then_used(pages: Pages, service: Service, screenshot: Shot) -> None:
    page = pages.open(service.url + "/playground")
    banner = page.locator("#banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("API key")
    expect(page.locator("#api-key")).to_be_focused()
    screenshot(page, "api-key-needed")
    page.fill("#api-key", API_KEY)
    with page.expect_request(re.compile(r"/v1/models$")) as listing:
        page.get_by_role("button", name="Use key").click()
    assert listing.value.headers.get("authorization") == f"Bearer {API_KEY}"
    expect(page.locator("body")).to_have_attribute("data-ready", "yes")
    expect(page.locator("#server-status")).to_contain_text("models ready")
    expect(page.locator("#banner")).to_be_hidden()
    expect(page.get_by_role("button", name="Forget")).to_be_visible()


def test_drawn_digits_are_classified_by_every_mnist_model(
    pages: Pages, service: Service, screenshot: Shot
) -> None:
    page = open_playground(pages, service)
    expect(page.get_by_role("radio", name=re.compile("MNIST")).first).to_be_checked()
    for strokes, digit in ((ONE, "1"), (SEVEN, "7"), (ZERO, "0")):
        page.click("#pad-clear")
        draw(page, strokes)
        expect(classifier_card(page, "cnn-mnist")).to_have_attribute("data-top", digit)
        expect(classifier_card(page, "cnn-mnist").locator("li.top .label")).to_have_text(digit)
        expect(classifier_card(page, "cnn-mnist")).to_have_attribute("data-in-distribution", "true")
        expect(classifier_card(page, "cnn-mnist").locator(".ood")).to_be_hidden()
        screenshot(page.locator("#classify"), f"classify-{digit}")
    # every ready MNIST classifier answered side by side, with its probabilities
    cards = page.locator("#classify-results .classifier")
    for i in range(cards.count()):
        expect(cards.nth(i).locator("li")).to_have_count(3)
        expect(cards.nth(i).locator(".meta")).to_contain_text("ms inference")


def test_an_uploaded_picture_is_classified(pages: Pages, service: Service) -> None:
    """A photo-like upload: dark ink on white paper, off centre, not 28x28."""
    picture = Image.new("L", (320, 240), 235)
    ink = ImageDraw.Draw(picture)
    ink.line([(40, 50), (130, 50), (75, 200)], fill=20, width=16, joint="curve")
    png = io.BytesIO()
    picture.save(png, format="PNG")
    page = open_playground(pages, service)
    page.set_input_files(
        "#pad-upload",
        files=[{"name": "seven.png", "mimeType": "image/png", "buffer": png.getvalue()}],
    )
    expect(classifier_card(page, "cnn-mnist")).to_have_attribute("data-top", "7")
    # the pad shows the picture as it was uploaded
    corner = page.evaluate(
        "document.querySelector('#pad').getContext('2d').getImageData(2, 140, 1, 1).data[0]"
    )
    assert corner > 200


def test_a_photo_is_not_a_digit(pages: Pages, service: Service, screenshot: Shot) -> None:
    """A colour photo (scikit-learn's china.jpg) is classified, and flagged out of distribution."""
    from sklearn.datasets import load_sample_image

    jpeg = io.BytesIO()
    Image.fromarray(load_sample_image("china.jpg")).save(jpeg, format="JPEG")
    page = open_playground(pages, service)
    page.set_input_files(
        "#pad-upload",
        files=[{"name": "china.jpg", "mimeType": "image/jpeg", "buffer": jpeg.getvalue()}],
    )
    card = classifier_card(page, "cnn-mnist")
    expect(card).to_have_attribute("data-in-distribution", "false")
    expect(card.locator(".ood")).to_be_visible()
    expect(card.locator(".ood")).to_have_text("not a digit?")
    expect(card.locator("li.top")).to_have_count(1)  # still answered, with its top classes
    screenshot(page.locator("#classify"), "classify-photo")


def test_each_dataset_has_its_own_classifiers(pages: Pages, service: Service) -> None:
    page = open_playground(pages, service)
    radios = page.locator("#classify-datasets input[type=radio]")
    if radios.count() < 2:
        pytest.skip("only one dataset has a ready classifier in models/")
    listing = httpx.get(
        f"{service.url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}
    ).json()["data"]
    dataset = radios.nth(1).get_attribute("value")
    expected = sorted(
        m["id"]
        for m in listing
        if m["task"] == "classification" and m["ready"] and m["dataset"] == dataset
    )
    page.locator("#classify-datasets label").nth(1).click()
    expect(page.locator("#pad-hint")).not_to_contain_text("digit")
    draw(page, [[(0.3, 0.2), (0.7, 0.2), (0.7, 0.85)], [(0.3, 0.2), (0.3, 0.85)]])  # trousers?
    cards = page.locator("#classify-results .classifier")
    assert sorted(cards.evaluate_all("cards => cards.map(c => c.dataset.model)")) == expected
    for i in range(cards.count()):
        expect(cards.nth(i).locator("li.top")).to_have_count(1)


def test_images_are_generated_by_every_generator(
    pages: Pages, service: Service, screenshot: Shot
) -> None:
    page = open_playground(pages, service)
    page.fill("#gen-n", "3")
    page.fill("#gen-seed", "7")
    if page.locator("#gen-steps").is_enabled():
        page.fill("#gen-steps", "4")
    page.select_option("#gen-label", index=1)
    # an invalid field (a card's guidance of 1.25 against a step of 0.5 once) blocks the submit
    # without a word in a headless browser
    assert page.locator("#generate-form").evaluate("form => form.checkValidity()")
    page.click("#generate-button")
    cards = page.locator("#gen-results .generator")
    assert cards.count() >= 1
    for i in range(cards.count()):
        expect(cards.nth(i)).to_have_attribute("data-state", "done", timeout=120_000)
        images = cards.nth(i).locator("img")
        expect(images).to_have_count(3)
        for j in range(3):
            src = images.nth(j).get_attribute("src") or ""
            assert src.startswith(f"data:image/png;base64,{PNG_B64}"), src[:40]
            assert images.nth(j).evaluate("img => img.complete && img.naturalWidth") > 0
    expect(cards.first.locator(".meta")).to_contain_text("seed 7")
    screenshot(page.locator("#generate"), "generate")
    # every class at once: one picture per label, each captioned
    page.select_option("#gen-label", "all")
    page.click("#generate-button")
    expect(cards.first).to_have_attribute("data-state", "done", timeout=120_000)
    expect(cards.first.locator("figcaption")).to_have_count(
        page.locator("#gen-label option").count() - 1
    )
    # a generated picture goes to the classifiers
    before = page.locator("#classify-results").get_attribute("data-done")
    cards.first.locator(".tile-button").first.click()
    expect(page.locator("#classify-results")).not_to_have_attribute("data-done", before or "")


def test_each_dataset_has_its_own_generators(pages: Pages, service: Service) -> None:
    """Choosing Fashion-MNIST (or any second dataset) lists its generators and its class names."""
    page = open_playground(pages, service)
    radios = page.locator("#generate-datasets input[type=radio]")
    if radios.count() < 2:
        pytest.skip("only one dataset has a ready generator in models/")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    listing = httpx.get(f"{service.url}/v1/models", headers=headers).json()["data"]
    dataset = radios.nth(1).get_attribute("value")
    expected = sorted(
        m["id"]
        for m in listing
        if m["task"] == "image-generation" and m["ready"] and m["dataset"] == dataset
    )
    page.locator("#generate-datasets label").nth(1).click()
    cards = page.locator("#gen-results .generator")
    expect(cards).to_have_count(len(expected))
    assert sorted(cards.evaluate_all("cards => cards.map(c => c.dataset.model)")) == expected
    details = httpx.get(f"{service.url}/v1/models/{expected[0]}", headers=headers).json()
    names = details["config"]["labels"]  # the dataset's class names (Fashion: "T-shirt/top", ...)
    options = page.locator("#gen-label option")
    expect(options).to_have_count(len(names) + 1)  # and "Every class"
    assert options.nth(0).text_content() == names[0]
    page.select_option("#gen-label", index=0)
    page.fill("#gen-n", "2")
    page.click("#generate-button")
    for i in range(cards.count()):
        expect(cards.nth(i)).to_have_attribute("data-state", "done", timeout=120_000)
        expect(cards.nth(i).locator("figcaption").first).to_have_text(names[0])


def test_model_cards_show_metrics_curves_and_card(
    pages: Pages, service: Service, screenshot: Shot
) -> None:
    page = open_playground(pages, service)
    for names in service.models.values():
        for name in names:
            expect(page.locator(f'.model-card[data-model="{name}"]')).to_have_count(1)
    card = page.locator('.model-card[data-model="cnn-mnist"]')
    expect(card.locator(".headline")).to_contain_text("test accuracy")
    expect(card.locator(".headline dd").first).to_have_text(re.compile(r"^\d{2}\.\d\d%$"))
    curves = card.locator("img[alt^='curves']")
    expect(curves).to_have_count(1)
    curves.scroll_into_view_if_needed()
    expect(curves).to_have_attribute("src", re.compile(r"^blob:"))
    expect(curves).to_have_js_property("complete", True)
    assert curves.evaluate("img => img.naturalWidth") > 0
    card.locator("summary", has_text="All metrics").click()
    expect(card.locator("details.metrics table")).to_contain_text("test loss")
    card.locator("summary", has_text="card.md").click()
    expect(card.locator(".markdown table").first).to_be_visible()
    expect(card.locator(".markdown")).to_contain_text("Confusion matrix")
    screenshot(card, "model-card-cnn-mnist")
    page.locator("#cards").scroll_into_view_if_needed()
    screenshot(page.locator("#cards"), "model-cards")


def test_live_metrics_show_rate_latency_and_sparklines(
    pages: Pages, service: Service, screenshot: Shot
) -> None:
    page = open_playground(pages, service)
    # each figure lasts one scrape interval: watch them all, and mark the first with traffic
    # (the test's own code: a wait_for_function would be refused by the page's policy on eval)
    page.evaluate(
        """() => { const live = document.querySelector('#live');
        const rate = document.querySelector('#stat-rate');
        const latency = document.querySelector('#stat-latency');
        new MutationObserver(() => {
          if (parseFloat(rate.textContent) > 0 && latency.textContent.endsWith('ms'))
            live.dataset.sawTraffic = `${rate.textContent} req/s, ${latency.textContent}`;
        }).observe(rate, {childList: true, characterData: true, subtree: true});
    }"""
    )
    page.select_option("#metrics-interval", "1000")
    live = page.locator("#live")
    expect(live).to_have_attribute("data-samples", re.compile(r"^[1-9]"))
    for _ in range(10):
        httpx.get(f"{service.url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
    expect(live).to_have_attribute("data-saw-traffic", re.compile(r"req/s, .* ms$"))
    expect(live).to_have_attribute("data-samples", re.compile(r"^([2-9]|\d\d+)$"))
    drawn = page.evaluate(
        """() => { const c = document.querySelector('#spark-rate');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"""
    )
    assert drawn > 50, "the request-rate sparkline drew nothing"
    page.locator("#live summary").click()
    expect(page.locator("#route-table")).to_contain_text("/v1/models")
    screenshot(page.locator("#live"), "live-metrics")
    # the parser on the tricky parts of the text format
    parsed = page.evaluate(
        """async () => {
        const m = await import('/static/playground/metrics.js');
        const text = '# HELP x\\n# TYPE x counter\\n' +
          'x_total{route="/a{b}",q="say \\\\"hi\\\\""} 3\\n' +
          'h_bucket{le="0.1"} 2\\nh_bucket{le="+Inf"} 4 1700000000\\nplain 1.5e3\\n';
        const s = m.parsePrometheus(text);
        return {n: s.length, route: s[0].labels.route, q: s[0].labels.q, inf: s[2].labels.le,
                plain: s[3].value, q50: m.quantile(0.5, [[0.1, 2], [Infinity, 4]])};
    }"""
    )
    assert parsed == {
        "n": 4, "route": "/a{b}", "q": 'say "hi"', "inf": "+Inf", "plain": 1500, "q50": 0.1,
    }  # fmt: skip


def test_language_models_suggest_and_stream(
    pages: Pages, service: Service, screenshot: Shot
) -> None:
    if not service.language_model_routes:
        pytest.skip(
            "this service has no language-model endpoints yet (/v1/models/{name}/next-word, "
            "/v1/completions); test_language_model_contract covers the page meanwhile"
        )
    page = open_playground(pages, service)
    page.fill("#prompt", "the cat sat on the")
    page.locator("#prompt").press("Space")
    cards = page.locator("#lm-results .lm")
    assert cards.count() == len(service.models["language-model"])
    for i in range(cards.count()):
        expect(cards.nth(i).locator(".chip").first).to_be_visible()
    before = page.input_value("#prompt")
    cards.first.locator(".chip").first.click()
    assert len(page.input_value("#prompt")) > len(before)
    log_tokens(page)
    page.fill("#max-tokens", "20")
    page.fill("#text-seed", "1")
    page.click("#complete")
    for i in range(cards.count()):
        expect(cards.nth(i)).to_have_attribute("data-state", "done", timeout=120_000)
        expect(cards.nth(i).locator(".meta")).to_contain_text("tokens in")
    log = page.evaluate("window.tokenLog")
    first = cards.first.get_attribute("data-model")
    lengths = [n for model, n, _ in log if model == first]
    assert len(lengths) >= 2 and lengths == sorted(lengths), lengths
    assert lengths[-1] > 0
    screenshot(page.locator("#text"), "language-models")


def test_language_model_contract(pages: Pages, screenshot: Shot) -> None:
    """Against the stub: debounced suggestions, a chip click, a completion streamed over time."""
    with stub_server() as stub:
        page = pages.open(stub.url + "/playground")
        expect(page.locator("body")).to_have_attribute("data-ready", "yes")
        card = page.locator('#lm-results [data-model="stub-lm"]')
        expect(card.locator(".chip")).to_have_count(5)
        expect(card.locator(".chip").nth(3)).to_contain_text("¶")  # the paragraph token
        asked = len(stub.bodies("/v1/models/stub-lm/next-word"))
        page.fill("#prompt", "")
        with page.expect_response(lambda r: asks_for(r.request, "It is a truth")):
            # the last keystroke's debounce timer sends the whole text; no request comes later
            page.locator("#prompt").press_sequentially("It is a truth", delay=35)
        typed = stub.bodies("/v1/models/stub-lm/next-word")[asked:]
        assert 1 <= len(typed) <= 4, f"not debounced: {len(typed)} requests for 13 keystrokes"
        assert typed[-1] == {"text": "It is a truth", "top_k": 5}
        card.locator(".chip", has_text="wife").click()
        expect(page.locator("#prompt")).to_have_value("It is a truth wife")

        log_tokens(page)
        page.fill("#max-tokens", str(len(PIECES)))
        page.click("#complete")
        generated = card.locator(".generated")
        expect(card).to_have_attribute("data-state", "done")
        expected = "".join(PIECES)
        expect(generated).to_have_text(expected)
        log = page.evaluate("window.tokenLog")
        lengths = [n for _, n, _ in log]
        assert lengths == [len("".join(PIECES[: i + 1])) for i in range(len(PIECES))], lengths
        # shown as they arrived, one every TOKEN_DELAY_S, not all at once at the end
        spread_ms = log[-1][2] - log[0][2]
        assert spread_ms > 0.5 * 1000 * TOKEN_DELAY_S * (len(PIECES) - 1), log
        expect(card.locator(".meta")).to_contain_text("finished: token limit")
        body = stub.bodies("/v1/completions")[-1]
        assert body == {
            "model": "stub-lm", "prompt": "It is a truth wife", "max_tokens": len(PIECES),
            "temperature": 0.8, "top_p": 0.95, "top_k": 40, "stream": True,
        }  # fmt: skip
        screenshot(page.locator("#text"), "language-model-contract")

        # the event-stream reader on chunks cut anywhere, CRLF endings, multi-line data, comments
        events = page.evaluate(
            """async () => {
            const { sseData } = await import('/static/playground/api.js');
            const text = 'data: {"a":\\r\\ndata: 1}\\r\\n\\r\\n: keep-alive\\n\\n' +
              'event: x\\ndata: two\\n\\ndata: [DONE]\\n\\n';
            const bytes = new TextEncoder().encode(text);
            const body = new ReadableStream({ start(c) {
              for (let i = 0; i < bytes.length; i += 3) c.enqueue(bytes.slice(i, i + 3));
              c.close(); } });
            const out = [];
            for await (const data of sseData(body)) out.push(data);
            return out;
        }"""
        )
        assert events == ['{"a":\n1}', "two", "[DONE]"]

        # Stop cuts a stream short (one that would take 20 s) and the server hears of it
        page.fill("#max-tokens", "500")
        page.click("#complete")
        expect(card).to_have_attribute("data-pieces", re.compile(r"^([2-9]|\d\d+)$"))
        page.click("#complete-stop")
        expect(card).to_have_attribute("data-state", "stopped")
        assert stub.abandoned.wait(timeout=10), "the server kept streaming after Stop"
        pieces = card.get_attribute("data-pieces")
        assert 2 <= int(pieces or 0) < 500
        expect(card.locator(".meta")).to_have_text("Stopped.")
        assert card.get_attribute("data-pieces") == pieces


def test_api_docs_render_offline(pages: Pages, service: Service, screenshot: Shot) -> None:
    redoc = pages.open(service.url + "/redoc")
    expect(redoc.locator("h1", has_text="seedserve")).to_be_visible()
    expect(redoc.get_by_text("/v1/completions").first).to_be_attached()
    screenshot(redoc, "redoc")
    page = pages.open(service.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("seedserve")
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible()
    assert operations.count() > 10
    expect(page.locator(".opblock-summary-path", has_text="/files/{filename}")).to_have_count(1)
    screenshot(page, "swagger-ui")
    # (the pages fixture asserts that every request stayed on loopback)


def test_whole_page(pages: Pages, service: Service, screenshot: Shot, artifacts: Path) -> None:
    page = open_playground(pages, service)
    draw(page, ONE)
    expect(classifier_card(page, "cnn-mnist")).to_have_attribute("data-top", "1")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(artifacts / "playground.png"), full_page=True)
    narrow = pages.open(service.url + "/playground", api_key=API_KEY)
    narrow.set_viewport_size({"width": 390, "height": 844})
    expect(narrow.locator("body")).to_have_attribute("data-ready", "yes")
    screenshot(narrow, "playground-phone")
    # a phone-sized viewport does not scroll sideways
    assert narrow.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
