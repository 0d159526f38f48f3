"""The inspector page at ``/ui`` in a real browser: headless Chromium (``browser_helpers``) against a real
``recsys serve`` with the tiny bundle published twice (two versions, so the admin switch has a target).

What a person sees must be what the API answers: the rendered recommendations are ``/recommend``'s, in
its order, with and without filters and ``exclude_seen``; the similar items are ``/similar_items``'
per source; a session's list is ``/recommend`` with ``context_item_ids``. The console stays free of
errors, every input has a label, the keyboard reaches and submits the search, unknown ids get a
message, and the page is readable at 1280x800 and at phone width (screenshots in the test's folder).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import browser_helpers
import httpx
import pytest
from serving_fixtures import ADMIN_TOKEN, Home, recsys_client, two_version_home

pytestmark = pytest.mark.slow

DESKTOP = (1280, 800)
PHONE = (390, 844)
WAIT_S = 30.0
IDS_JS = (
    "return Array.from(document.querySelectorAll(arguments[0] + ' li[data-item-id]'), e => e.dataset.itemId)"
)
# Every form control, and whether it has a label a screen reader announces (a <label>, or aria-label).
LABELS_JS = """
return Array.from(document.querySelectorAll('input, select, textarea')).map(e => ({
  id: e.id, labelled: e.labels.length > 0 || Boolean(e.getAttribute('aria-label'))}));
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """The tiny bundle published, then a copy of it as a second version (now current)."""
    mktemp = tmp_path_factory.mktemp
    return two_version_home(mktemp("ui-home"), mktemp("ui-copy"), second="v-ui-second")


@pytest.fixture(scope="module")
def api(home: Home) -> Iterator[httpx.Client]:
    with recsys_client(home) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with browser_helpers.chromium(width=DESKTOP[0], height=DESKTOP[1]) as driver:
        yield driver


@pytest.fixture
def page(browser: Any, api: httpx.Client) -> Iterator[Any]:
    """The page freshly opened; after the test, the console must hold no error."""
    browser_helpers.set_viewport(browser, *DESKTOP)
    browser.get(f"{api.base_url}/ui")  # http://127.0.0.1:PORT/ui: no host name resolves in the browser
    wait(browser, "return document.body.dataset.state === 'ready'")
    browser_helpers.console_errors(browser)  # drop what was logged before this test
    yield browser
    assert browser_helpers.console_errors(browser) == []


def wait(driver: Any, script: str, *args: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(lambda d: d.execute_script(script, *args))


def ready(driver: Any, list_id: str) -> None:
    wait(driver, "return document.getElementById(arguments[0]).dataset.state === 'ready'", list_id)


def shown(driver: Any, selector: str) -> list[str]:
    return list(driver.execute_script(IDS_JS, selector))


def recommended(api: httpx.Client, **body: Any) -> list[str]:
    response = api.post("/recommend", json=body)
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def by_id(driver: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def search_user_by_keyboard(driver: Any, user_id: str) -> None:
    """Tab from the top of the page to the user id field, type, press Enter."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    for _ in range(12):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        if driver.execute_script("return document.activeElement.id") == "user-id":
            break
    else:
        pytest.fail("12 presses of Tab never reached the user id field")
    ActionChains(driver).send_keys(user_id, Keys.ENTER).perform()
    ready(driver, "filtered-list")


def test_every_input_has_a_label(page: Any) -> None:
    controls = page.execute_script(LABELS_JS)
    assert len(controls) >= 10
    assert [c["id"] for c in controls if not c["labelled"]] == []


def test_a_user_searched_by_keyboard_shows_what_recommend_answers(
    page: Any, api: httpx.Client, home: Home, tmp_path: Path
) -> None:
    user = home.users[0]
    search_user_by_keyboard(page, user)
    assert shown(page, "#recs-list") == recommended(api, user_id=user, n=10)
    assert shown(page, "#filtered-list") == recommended(api, user_id=user, n=10)  # no filter set yet
    assert page.find_elements("css selector", "#recs-list .flag") == []
    history = shown(page, "#history-list")
    assert history and set(history) <= home.seen[user]
    explained = "return document.querySelectorAll('#recs-list .why .up, #recs-list .why .down').length"
    assert page.execute_script(explained) > 0  # each item's top features, from /explain
    page.save_screenshot(str(tmp_path / "user-1280x800.png"))
    assert page.execute_script("return [window.innerWidth, window.innerHeight]") == list(DESKTOP)

    # the same list with filters: a category and a price range
    category = home.categories[recommended(api, user_id=user, n=1)[0]]
    from selenium.webdriver.support.ui import Select

    Select(by_id(page, "filter-category")).select_by_value(category)
    by_id(page, "filter-price-max").send_keys("30")
    by_id(page, "filter-form").submit()
    ready(page, "filtered-list")
    filters = {"categories": [category], "price_max": 30.0}
    expected = recommended(api, user_id=user, n=10, filters=filters)
    assert shown(page, "#filtered-list") == expected
    assert all(home.categories[i] == category and home.prices[i] <= 30 for i in expected)

    # "buy again": seen items may come back, and each one is flagged
    by_id(page, "user-exclude-seen").click()
    by_id(page, "user-form").submit()
    ready(page, "filtered-list")
    again = recommended(api, user_id=user, n=10, exclude_seen=False)
    assert shown(page, "#recs-list") == again
    flagged = page.execute_script(
        "return Array.from(document.querySelectorAll('#recs-list li:has(.flag)'), e => e.dataset.itemId)"
    )
    assert flagged == [i for i in again if i in home.seen[user]]

    browser_helpers.set_viewport(page, *PHONE, mobile=True)
    assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    page.save_screenshot(str(tmp_path / "user-390x844.png"))
    assert page.execute_script("return [window.innerWidth, window.innerHeight]") == list(PHONE)
    assert (tmp_path / "user-1280x800.png").stat().st_size > 10_000
    assert (tmp_path / "user-390x844.png").stat().st_size > 10_000


def test_clicking_an_item_shows_its_similar_items_by_source(
    page: Any, api: httpx.Client, home: Home, tmp_path: Path
) -> None:
    user = home.users[1]
    search_user_by_keyboard(page, user)
    first = page.find_element("css selector", "#recs-list li .pick")
    item = page.execute_script("return arguments[0].closest('li').dataset.itemId", first)
    first.click()
    ready(page, "similar-text")
    ready(page, "similar-cooccurrence")
    assert by_id(page, "item-title").text == home.titles[item]
    for source in ("text", "cooccurrence"):
        answer = api.post("/similar_items", json={"item_id": item, "n": 10, "source": source})
        assert answer.status_code == 200, answer.text
        expected = [i["item_id"] for i in answer.json()["items"]]
        assert expected and shown(page, f"#similar-{source}") == expected, source
    page.save_screenshot(str(tmp_path / "item-1280x800.png"))
    browser_helpers.set_viewport(page, *PHONE, mobile=True)
    assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    page.save_screenshot(str(tmp_path / "item-390x844.png"))


def test_a_session_of_clicks_changes_the_list_and_can_be_recorded(
    page: Any, api: httpx.Client, home: Home
) -> None:
    by_id(page, "tab-session").click()
    ready(page, "session-recs")
    wait(page, "return document.querySelectorAll('#session-popular li').length > 0")
    nobody = "ui-test-nobody"
    assert shown(page, "#session-recs") == recommended(api, user_id=nobody, n=10)

    clicked: list[str] = []
    for _ in range(2):
        before = shown(page, "#session-recs")
        button = page.find_element("css selector", "#session-recs li .pick")
        clicked.append(page.execute_script("return arguments[0].closest('li').dataset.itemId", button))
        button.click()
        wait(
            page, "return document.querySelectorAll('#session-list li').length === arguments[0]", len(clicked)
        )
        ready(page, "session-recs")
        after = shown(page, "#session-recs")
        assert after != before
        assert after == recommended(api, user_id=nobody, n=10, context_item_ids=clicked)
    assert not set(clicked) & set(after)  # the session's items are not recommended back

    # recording: the next click also goes to /events for the chosen user
    page.find_element("css selector", "#session-recording summary").click()
    by_id(page, "session-record").click()
    by_id(page, "session-user").send_keys("ui-test-recorded")
    button = page.find_element("css selector", "#session-popular li .pick")
    item = page.execute_script("return arguments[0].closest('li').dataset.itemId", button)
    button.click()
    wait(page, "return document.getElementById('session-message').textContent.startsWith('Recorded')")
    history = api.get("/history", params={"user_id": "ui-test-recorded"}).json()
    assert history["seen_item_ids"] == [item]


def test_unknown_user_and_item_get_a_clear_message(page: Any) -> None:
    search_user_by_keyboard(page, "no-such-user-anywhere")
    assert "Unknown user" in by_id(page, "user-message").text
    assert page.find_elements("css selector", "#recs-list li")  # still answered: a new visitor's list

    by_id(page, "tab-item").click()
    by_id(page, "item-id").send_keys("no-such-item")
    by_id(page, "item-form").submit()
    wait(page, "return document.getElementById('item-message').textContent.includes('Unknown item')")
    assert not by_id(page, "item-card").is_displayed()


def test_the_model_view_and_its_admin_controls(page: Any, api: httpx.Client, tmp_path: Path) -> None:
    by_id(page, "tab-model").click()
    wait(page, "return document.querySelectorAll('#versions tbody tr').length > 0")
    versions = api.get("/model/versions").json()["versions"]
    rows = page.execute_script(
        "return Array.from(document.querySelectorAll('#versions tbody tr'), e => e.dataset.version)"
    )
    assert rows == [v["version"] for v in versions] and len(rows) == 2
    features = api.get("/model/details").json()["feature_importance"]
    bars = page.execute_script(
        "return Array.from(document.querySelectorAll('#importance-chart g'), e => e.dataset.feature)"
    )
    assert bars == [f["feature"] for f in features[:15]]
    assert by_id(page, "model-info").text.count(api.get("/model").json()["version"]) >= 1
    page.save_screenshot(str(tmp_path / "model-1280x800.png"))

    # read-only without the token: no admin control at all
    assert not by_id(page, "admin-controls").is_displayed()
    assert page.find_elements("css selector", "#versions button") == []

    by_id(page, "admin-token").send_keys(ADMIN_TOKEN)
    by_id(page, "admin-form").submit()
    wait(page, "return document.querySelectorAll('#versions button').length === 1")
    assert by_id(page, "admin-controls").is_displayed()
    (target,) = [v["version"] for v in versions if not v["current"]]
    page.find_element("css selector", f"#versions tr[data-version='{target}'] button").click()
    wait(page, "return document.getElementById('admin-message').textContent.startsWith('Now serving')")
    assert api.get("/model").json()["version"] == target
    current = [v["version"] for v in api.get("/model/versions").json()["versions"] if v["current"]]
    assert current == [target]

    by_id(page, "admin-reload").click()  # the registry's current version is the one served: no swap
    wait(page, "return document.getElementById('admin-message').textContent.startsWith('Already serving')")

    by_id(page, "admin-forget").click()
    assert not by_id(page, "admin-controls").is_displayed()
    wait(page, "return document.querySelectorAll('#versions button').length === 0")
