import pytest

from services.common.domains import domain_of, type_slug, type_words


@pytest.mark.parametrize(
    ("website", "domain"),
    [
        ("https://bluedoorcoffee.com", "bluedoorcoffee.com"),
        ("http://www.Example.COM/about?x=1#top", "example.com"),
        ("https://www.example.com:8443/contact", "example.com"),
        ("example.com", "example.com"),
        ("www.example.co.uk/path", "example.co.uk"),
        ("example.com:8080/menu", "example.com"),
        ("  https://shop.example.com/  ", "shop.example.com"),
        ("https://user:pw@example.com/", "example.com"),
        ("https://example.com./", "example.com"),
        ("https://bücher.de", "xn--bcher-kva.de"),
        ("http://example.com:99999999999/", "example.com"),
    ],
)
def test_domain_of_extracts_the_bare_host(website: str, domain: str) -> None:
    assert domain_of(website) == domain


@pytest.mark.parametrize(
    "website",
    ["", "   ", "https://", "localhost", "http://localhost:8000", "not a url", "mailto:a@b.com",
     "http://192.168.0.1/", "http://[::1]/", "https://exa_mple.com", "https://-bad-.com",
     "info@example.com"],
)  # fmt: skip
def test_domain_of_returns_empty_when_there_is_no_usable_domain(website: str) -> None:
    assert domain_of(website) == ""


def test_type_words_and_slug_are_lower_case_and_singular() -> None:
    assert type_words("Coffee Shops") == ["coffee", "shop"]
    assert type_words("bakeries") == ["bakery"]
    assert type_words("fitness  class") == ["fitness", "class"]
    assert type_slug("  Coffee   Shops ") == "coffee_shop"
    assert type_slug("auto-repair") == "auto_repair"
    assert type_slug("") == ""
