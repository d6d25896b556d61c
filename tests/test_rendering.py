"""The render stage's template machinery: lookup, sandbox, strictness, error locations, caching, filters."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from orchestrator.config import Settings
from orchestrator.errors import InputError
from orchestrator.rendering import TemplateLoader, TemplateRenderError, is_html_name, synthetic_context
from orchestrator.timeutil import zone

SHANGHAI = zone("Asia/Shanghai")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """campaigns/ plus two template folders; ``shared.txt.j2`` exists in all three, the rest in one each."""
    write(tmp_path / "campaigns" / "shared.txt.j2", "campaign folder")
    write(tmp_path / "first" / "shared.txt.j2", "first folder")
    write(tmp_path / "second" / "shared.txt.j2", "second folder")
    write(tmp_path / "second" / "sms" / "only_second.txt.j2", "second only")
    write(tmp_path / "first" / "sms" / "both.txt.j2", "first wins")
    write(tmp_path / "second" / "sms" / "both.txt.j2", "second loses")
    return tmp_path


@pytest.fixture
def loader(tree: Path) -> TemplateLoader:
    return TemplateLoader([tree / "first", tree / "second"]).for_campaign(tree / "campaigns" / "wake.yaml")


def render(loader: TemplateLoader, name: str, **context) -> str:
    return loader.load(name).render(context)


def test_campaign_folder_first_then_template_folders_in_order(loader: TemplateLoader):
    assert render(loader, "shared.txt.j2") == "campaign folder"
    assert render(loader, "sms/both.txt.j2") == "first wins"
    assert render(loader, "sms/only_second.txt.j2") == "second only"
    assert render(loader, "sms/../shared.txt.j2") == "campaign folder"  # normalised, stays inside


def test_without_a_campaign_only_template_folders(tree: Path):
    plain = TemplateLoader([tree / "first", tree / "second"])
    assert render(plain, "shared.txt.j2") == "first folder"


def test_from_settings_resolves_folders_against_the_config_folder(tree: Path):
    settings = Settings(templates=["second", "first"], base_dir=str(tree))
    assert render(TemplateLoader.from_settings(settings), "sms/both.txt.j2") == "second loses"


@pytest.mark.parametrize("name", ["../../etc/passwd", "../first/shared.txt.j2", "sms/../../x.txt"])
def test_paths_climbing_out_are_refused(loader: TemplateLoader, name: str):
    with pytest.raises(InputError, match="leaves the template folder") as caught:
        loader.load(name)
    assert caught.value.file.endswith("wake.yaml")


def test_absolute_paths_are_refused(loader: TemplateLoader, tree: Path):
    with pytest.raises(InputError, match="is absolute"):
        loader.load(str(tree / "first" / "shared.txt.j2"))
    with pytest.raises(InputError, match="is absolute"):
        loader.load("/etc/passwd")


def test_symlink_out_of_a_template_folder_is_refused(loader: TemplateLoader, tree: Path):
    secret = write(tree / "outside" / "secret.txt", "secret")
    (tree / "first" / "leak.txt.j2").symlink_to(secret)
    (tree / "second" / "linked_dir").symlink_to(tree / "outside", target_is_directory=True)
    with pytest.raises(InputError, match="resolves outside the template folder"):
        loader.load("leak.txt.j2")
    with pytest.raises(InputError, match="resolves outside"):
        loader.load("linked_dir/secret.txt")


def test_symlink_inside_a_template_folder_is_fine(loader: TemplateLoader, tree: Path):
    (tree / "first" / "alias.txt.j2").symlink_to(tree / "first" / "sms" / "both.txt.j2")
    assert render(loader, "alias.txt.j2") == "first wins"


def test_missing_template_says_where_it_looked(loader: TemplateLoader, tree: Path):
    with pytest.raises(InputError, match=r"'nope\.txt\.j2' not found") as caught:
        loader.load("nope.txt.j2")
    assert str(tree / "campaigns") in caught.value.hint
    assert str(tree / "second") in caught.value.hint


def test_undefined_variable_names_file_line_and_name(loader: TemplateLoader, tree: Path):
    path = write(tree / "first" / "greet.txt.j2", "您好 {{ customer.name }}\n\n{{ customer.nmae }}\n")
    with pytest.raises(TemplateRenderError) as caught:
        loader.load("greet.txt.j2").render(synthetic_context(False))
    error = caught.value
    assert (error.file, error.line) == (str(path), 3)
    assert "nmae" in error.message
    assert error.render().startswith(f"error: {path}:3: ")
    assert isinstance(error, InputError) and error.exit_code == 2


def test_undefined_top_level_variable_inside_a_block(loader: TemplateLoader, tree: Path):
    write(tree / "first" / "loop.txt.j2", "{% for tag in customer.tags %}\n{{ tag }}\n{% endfor %}\n{{ coupon }}\n")
    with pytest.raises(TemplateRenderError, match="'coupon' is undefined") as caught:
        loader.load("loop.txt.j2").render(synthetic_context(False))
    assert caught.value.line == 4


def test_error_in_an_included_template_points_at_the_included_file(loader: TemplateLoader, tree: Path):
    footer = write(tree / "second" / "partials" / "footer.txt.j2", "line one\n{{ missing_var }}\n")
    write(tree / "first" / "body.txt.j2", "Hello\n{% include 'partials/footer.txt.j2' %}\n")
    with pytest.raises(TemplateRenderError, match="missing_var") as caught:
        loader.load("body.txt.j2").render({})
    assert (caught.value.file, caught.value.line) == (str(footer), 2)


def test_inline_template_errors_name_the_campaign_file_and_label(loader: TemplateLoader, tree: Path):
    template = loader.from_string("第一行\n{{ customer.nickname }}", label="inline sms text")
    with pytest.raises(TemplateRenderError) as caught:
        template.render(synthetic_context(False))
    assert caught.value.file == str(tree / "campaigns" / "wake.yaml")
    assert "inline sms text, line 2" in caught.value.message
    assert "nickname" in caught.value.message


def test_syntax_error_names_file_and_line(loader: TemplateLoader, tree: Path):
    path = write(tree / "first" / "broken.txt.j2", "ok\n{% if customer.name %}\nno endif\n")
    with pytest.raises(InputError, match="template syntax error") as caught:
        loader.load("broken.txt.j2")
    assert caught.value.file == str(path)
    assert caught.value.line == 3  # the last line: where Jinja ran out of template looking for `endif`
    assert "endif" in caught.value.message


def test_syntax_error_in_the_middle_of_a_file(loader: TemplateLoader, tree: Path):
    path = write(tree / "first" / "typo.txt.j2", "a\nb\n{{ customer.name }\nd\n")
    with pytest.raises(InputError) as caught:
        loader.load("typo.txt.j2")
    assert (caught.value.file, caught.value.line) == (str(path), 3)


def test_unknown_filter_is_a_syntax_level_error(loader: TemplateLoader):
    with pytest.raises(InputError, match=r"(?i)inline sms text, line 1: .*no filter named 'shout'"):
        loader.from_string("{{ customer.name|shout }}", label="inline sms text")


@pytest.mark.parametrize(
    "source",
    [
        "{{ customer.__class__.__mro__ }}",
        "{{ customer.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__.__base__ }}",
        "{{ campaign.update({'name': 'hijacked'}) }}",
        "{{ customer.tags.append('x') }}",
    ],
)
def test_sandbox_blocks_python_internals_and_mutation(loader: TemplateLoader, source: str):
    template = loader.from_string(source, label="inline sms text")
    with pytest.raises(TemplateRenderError, match=r"not allowed in a template: .*unsafe") as caught:
        template.render(synthetic_context(False))
    assert "sandbox" in caught.value.hint


def test_compiled_template_is_cached_until_the_file_changes(loader: TemplateLoader, tree: Path):
    path = write(tree / "first" / "cached.txt.j2", "version {{ 1 }}")
    first = loader.load("cached.txt.j2")
    assert loader.load("cached.txt.j2") is first
    assert TemplateLoader.for_campaign(loader, None).load("cached.txt.j2") is first  # views share the cache

    write(path, "version {{ 2 }}")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = loader.load("cached.txt.j2")
    assert second is not first
    assert second.render({}) == "version 2"
    assert loader.load("cached.txt.j2") is second


def test_autoescape_for_html_templates_only(loader: TemplateLoader, tree: Path):
    write(tree / "first" / "mail.html.j2", "<p>{{ name }}</p>")
    write(tree / "first" / "sms.txt.j2", "{{ name }}")
    context = {"name": "<b>Tom & Jerry</b>"}
    assert loader.load("mail.html.j2").render(context) == "<p>&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p>"
    assert loader.load("sms.txt.j2").render(context) == "<b>Tom & Jerry</b>"
    assert loader.load("sms.txt.j2", html=True).render(context) == "&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;"
    assert loader.from_string("{{ name }}", label="inline html", html=True).render(context).startswith("&lt;b&gt;")
    assert [is_html_name(n) for n in ("a.html.j2", "a.HTM", "a.html", "a.txt.j2", "html.txt")] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_blocks_are_trimmed_and_none_prints_nothing(loader: TemplateLoader):
    source = "Tags:\n{% for tag in tags %}\n  {% if tag %}\n- {{ tag }}\n  {% endif %}\n{% endfor %}\n[{{ city }}]"
    assert loader.from_string(source, label="t").render({"tags": ["vip", ""], "city": None}) == "Tags:\n- vip\n[]"


def test_money_filter(tree: Path):
    cny = TemplateLoader([tree / "first"])
    money = cny.from_string("{{ v|money }}|{{ v|money(0) }}|{{ big|money }}|{{ neg|money }}", label="t")
    assert money.render({"v": Decimal("20"), "big": Decimal("12345.675"), "neg": -5}) == "¥20.00|¥20|¥12,345.68|-¥5.00"
    assert cny.from_string("{{ none|money }}", label="t").render({"none": None}) == ""
    usd = TemplateLoader([], currency="USD")
    assert usd.from_string("{{ 9.5|money }}", label="t").render({}) == "$9.50"


def test_date_filter_uses_the_customers_zone_then_the_configured_one(tree: Path):
    loader = TemplateLoader([], tz=SHANGHAI)
    template = loader.from_string("{{ at|date }} {{ at|date('%H:%M') }}", label="t")
    at = datetime(2026, 3, 1, 18, 30, tzinfo=UTC)
    assert template.render({"at": at}) == "2026-03-02 02:30"  # configured Asia/Shanghai
    assert template.render({"at": at, "customer": {"timezone": "Europe/London"}}) == "2026-03-01 18:30"
    assert template.render({"at": at, "customer": {"timezone": "Not/AZone"}}) == "2026-03-02 02:30"
    explicit = loader.from_string("{{ at|date('%Y年%m月%d日', tz='America/New_York') }}", label="t")
    assert explicit.render({"at": at}) == "2026年03月01日"
    plain = loader.from_string("{{ d|date('%m月%d日') }}{{ nothing|date }}", label="t")
    assert plain.render({"d": date(1990, 5, 20), "nothing": None}) == "05月20日"


def test_mask_phone_filter(tree: Path):
    template = TemplateLoader([]).from_string("{{ p|mask_phone }}", label="t")
    assert template.render({"p": "13812345678"}) == "138****5678"
    assert template.render({"p": "+8613812345678"}) == "+86 138****5678"
    assert template.render({"p": "12345"}) == "***45"
    assert template.render({"p": None}) == ""


def test_synthetic_context_has_the_documented_shape():
    now = datetime(2026, 3, 1, 10, 0, tzinfo=SHANGHAI)
    context = synthetic_context(True, now=now, campaign_name="wake", step_name="sms-preview")
    customer = context["customer"]
    for key in ("customer_id", "name", "email", "phone", "tags", "attributes", "rfm_segment", "days_to_birthday"):
        assert key in customer
    assert isinstance(customer["monetary"], Decimal)
    # the same keys the built-in coupon offer gives templates, so validate renders what a run renders
    from orchestrator.config import Settings
    from orchestrator.coupons.offer import CouponOffer, CouponTerms

    coupon = CouponOffer(CouponTerms(kind="amount_off", value=20, valid_days=14), Settings(), step=None)
    assert set(context["offer"]) == set(coupon._context("ABCDEFGHJKMN", now))
    assert context["offer"]["expires_at"] > now
    assert context["campaign"]["name"] == "wake" and context["step"] == {"name": "sms-preview"}
    assert context["now"] == now and context["unsubscribe_url"].startswith("https://")
    assert synthetic_context(False)["offer"] is None


def test_synthetic_context_catches_offer_use_in_a_step_without_offer(loader: TemplateLoader, tree: Path):
    write(
        tree / "first" / "coupon.txt.j2", "{{ customer.name }}，券码 {{ offer.code }}，满{{ offer.min_spend|money(0) }}"
    )
    template = loader.load("coupon.txt.j2")
    assert template.render(synthetic_context(True)) == "张伟，券码 SYN7-Q2KX-8ZD4，满¥100"
    with pytest.raises(TemplateRenderError, match="code") as caught:
        template.render(synthetic_context(False))
    assert caught.value.line == 1

    guarded = loader.from_string("{% if offer %}券码 {{ offer.code }}{% else %}无券{% endif %}", label="t")
    assert guarded.render(synthetic_context(False)) == "无券"
    assert guarded.render(synthetic_context(True)).startswith("券码 ")


# --- mistakes explained ----------------------------------------------------------------------------------------


def test_a_misspelt_field_gets_a_suggestion(loader: TemplateLoader, tree: Path):
    write(tree / "first" / "typo.txt.j2", "您好\n{{ customer.nmae }}")
    with pytest.raises(TemplateRenderError) as caught:
        loader.load("typo.txt.j2").render(synthetic_context(False))
    assert caught.value.line == 2 and "did you mean 'name'?" in caught.value.message


def test_a_misspelt_variable_gets_a_suggestion(loader: TemplateLoader, tree: Path):
    write(tree / "first" / "typo.txt.j2", "{{ custmer.name }}")
    with pytest.raises(TemplateRenderError) as caught:
        loader.load("typo.txt.j2").render(synthetic_context(False))
    assert "did you mean 'customer'?" in caught.value.message


def test_an_unknown_filter_names_the_closest_or_lists_them(loader: TemplateLoader, tree: Path):
    write(tree / "first" / "filter.txt.j2", "a\n{{ offer.value|mony }}")
    with pytest.raises(InputError) as caught:
        loader.load("filter.txt.j2")
    assert caught.value.line == 2 and "did you mean 'money'?" in caught.value.render()
    write(tree / "first" / "filter2.txt.j2", "{{ offer.value|zzzqqq }}")
    with pytest.raises(InputError) as caught:
        loader.load("filter2.txt.j2")
    assert "money" in caught.value.render() and "mask_phone" in caught.value.render()
