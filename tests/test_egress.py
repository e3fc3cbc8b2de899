"""The egress policy: origin lists, strict URL parsing, public addresses, the webhook transport.

Every refusal is observed through an injected resolver and network backend that record where a
connection would go; the only connections ever opened go to loopback listeners.
"""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from service.delivery.egress import (
    EgressRefused,
    OriginList,
    WebhookTransport,
    endpoint_allowlist,
    is_public_address,
    parse_url,
)
from tests.netfakes import FakeResolver, Listener, RecordingBackend

MARKETO = OriginList.parse("https://*.mktorest.com")


@pytest.mark.parametrize(
    "url",
    [
        "https://123-ABC-456.mktorest.com",
        "https://123-abc-456.mktorest.com/rest",
        "HTTPS://123-ABC-456.MKTOREST.COM:443/",
        "https://a.b.mktorest.com",
    ],
)
def test_the_default_endpoints_allow_marketo_hosts(url: str) -> None:
    assert MARKETO.allows(parse_url(url, what="endpoint"))


@pytest.mark.parametrize(
    "url",
    [
        "https://mktorest.com",  # the bare domain is no subdomain of itself
        "http://123-abc-456.mktorest.com",  # another scheme
        "https://123-abc-456.mktorest.com:8443",  # another port
        "https://123-abc-456.mktorest.com.example.test",
        "https://123-abc-456mktorest.com",
        "https://127.0.0.1",
        "https://[::1]",
    ],
)
def test_the_default_endpoints_refuse_anything_else(url: str) -> None:
    assert not MARKETO.allows(parse_url(url, what="endpoint"))


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.test#.mktorest.com",
        "https://evil.test?.mktorest.com",
        "https://user@123-abc-456.mktorest.com",
        "https://123-abc-456.mktorest.com@evil.test",
        "https://123-abc-456.mktorest.com\\@evil.test",
        "https://123-abc-456.mktorest.com%2F@evil.test",
        "https:// 123-abc-456.mktorest.com",
        "https://123-abc-456.mktorest.com\t",
        "https://123-abc-456.mktorest.com:0",
        "https://123-abc-456.mktorest.com:65536",
        "https://123-abc-456.mktorest.com:443:443",
        "https://123-abc-456.mktorest.com:x",
        "https://2130706433",
        "https://127.1",
        "https://[fe80::1%25eth0]",
        "https://a_b.mktorest.com",
        "https://",
        "file:///etc/passwd",
        "ftp://123-abc-456.mktorest.com",
        "//123-abc-456.mktorest.com",
        "123-abc-456.mktorest.com",
    ],
)
def test_tricky_urls_are_refused_by_the_parser(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url, what="endpoint")


def test_host_names_are_compared_after_idna_and_case_folding() -> None:
    listed = OriginList.parse("https://*.BÜCHER.example")
    assert listed.allows(parse_url("https://shop.xn--bcher-kva.example", what="URL"))
    assert listed.allows(parse_url("https://Shop.Bücher.example", what="URL"))
    assert not listed.allows(parse_url("https://shop.bucher.example", what="URL"))


def test_wildcard_ports_and_exact_ports() -> None:
    listed = OriginList.parse("http://127.0.0.1:*, https://[::1]:8443, https://hooks.example.test")
    assert listed.allows(parse_url("http://127.0.0.1:1", what="URL"))
    assert listed.allows(parse_url("http://127.0.0.1:65535/x", what="URL"))
    assert not listed.allows(parse_url("https://127.0.0.1:8443", what="URL"))
    assert listed.allows(parse_url("https://[::1]:8443", what="URL"))
    assert not listed.allows(parse_url("https://[::1]:8444", what="URL"))
    assert listed.allows(parse_url("https://hooks.example.test:443", what="URL"))
    assert not listed.allows(parse_url("https://hooks.example.test:8443", what="URL"))
    assert not listed.allows(parse_url("https://a.hooks.example.test", what="URL"))


@pytest.mark.parametrize(
    "text",
    [
        "https://*.mktorest.com/",
        "https://*.mktorest.com/rest",
        "https://user@x.mktorest.com",
        "https://evil.test#.mktorest.com",
        "https://x.mktorest.com?a",
        "mktorest.com",
        "ws://x.mktorest.com",
        "https://*",
        "https://*.*.mktorest.com",
        "https://x.*.mktorest.com",
        "https://*.127.0.0.1",
        "http://*.0.1:*",
        "https://::1",
        "https://x:*0",
    ],
)
def test_bad_origins_in_a_list_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        OriginList.parse(f"https://*.mktorest.com, {text}")


def test_the_default_endpoint_joins_the_endpoint_allowlist() -> None:
    listed = endpoint_allowlist("https://*.mktorest.com", "http://127.0.0.1:8080/rest")
    assert listed.allows(parse_url("http://127.0.0.1:8080", what="URL"))
    assert not listed.allows(parse_url("http://127.0.0.1:8081", what="URL"))
    assert listed.allows(parse_url("https://1.mktorest.com", what="URL"))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "240.0.0.1",
        "::",
        "::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "ff00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


def test_a_global_address_is_public() -> None:
    # A pure function of the address: nothing is sent anywhere.
    assert is_public_address(ipaddress.ip_address("100.0.0.1"))
    assert is_public_address(ipaddress.ip_address("2606:4700::1"))


def _webhook_client(
    allowed: str, resolver: FakeResolver, backend: RecordingBackend
) -> httpx.AsyncClient:
    transport = WebhookTransport(OriginList.parse(allowed), resolver=resolver, backend=backend)
    return httpx.AsyncClient(transport=transport, timeout=5.0)


@pytest.mark.parametrize(
    "answers",
    [
        ["127.0.0.1"],
        ["10.1.2.3"],
        ["169.254.169.254"],
        ["::1"],
        ["fc00::1"],
        ["ff00::1"],
        ["::ffff:127.0.0.1"],
        ["100.0.0.1", "10.1.2.3"],  # one bad answer is enough
    ],
)
async def test_a_webhook_host_resolving_to_a_non_public_address_is_never_connected(
    answers: list[str],
) -> None:
    async with Listener() as listener:
        resolver = FakeResolver({"hooks.example.test": answers})
        backend = RecordingBackend()
        async with _webhook_client("", resolver, backend) as client:
            with pytest.raises(EgressRefused):
                await client.post(f"https://hooks.example.test:{listener.port}/hook", content=b"{}")
        assert resolver.lookups == [("hooks.example.test", listener.port)]
        assert backend.connects == []
        assert listener.connections == 0


async def test_a_webhook_is_connected_to_the_address_that_was_checked() -> None:
    # A second look-up would answer loopback (rebinding): the name is resolved only once and the
    # connection goes to the checked address (the recording backend never opens it).
    resolver = FakeResolver({"hooks.example.test": ["100.0.0.1"]})
    backend = RecordingBackend()
    async with _webhook_client("", resolver, backend) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.post("https://hooks.example.test/hook", content=b"{}")
        resolver.table["hooks.example.test"] = ["127.0.0.1"]
    assert not isinstance(caught.value, EgressRefused)
    assert resolver.lookups == [("hooks.example.test", 443)]
    assert backend.connects == [("100.0.0.1", 443)]


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.test/hook",
        "http://127.0.0.1:{port}/hook",
        "https://127.0.0.1:{port}/hook",
        "https://[::1]:{port}/hook",
    ],
)
async def test_unlisted_http_and_literal_loopback_webhooks_are_refused(url: str) -> None:
    async with Listener() as listener:
        resolver = FakeResolver({"hooks.example.test": ["100.0.0.1"]})
        backend = RecordingBackend()
        async with _webhook_client("", resolver, backend) as client:
            with pytest.raises(EgressRefused):
                await client.post(url.format(port=listener.port), content=b"{}")
        assert backend.connects == []
        assert listener.connections == 0


async def test_a_listed_loopback_origin_is_delivered() -> None:
    async with Listener(answer=True) as listener:
        resolver = FakeResolver({})
        backend = RecordingBackend()
        async with _webhook_client(listener.origin, resolver, backend) as client:
            response = await client.post(f"{listener.origin}/hook", content=b'{"a":1}')
        assert response.status_code == 200
        assert backend.connects == [("127.0.0.1", listener.port)]
        assert len(listener.requests) == 1
        assert listener.requests[0].startswith(b"POST /hook HTTP/1.1")
        assert listener.requests[0].endswith(b'{"a":1}')


async def test_a_listed_name_keeps_its_host_header_on_the_resolved_address() -> None:
    async with Listener(answer=True) as listener:
        origin = f"http://receiver.example.test:{listener.port}"
        resolver = FakeResolver({"receiver.example.test": ["127.0.0.1"]})
        backend = RecordingBackend()
        async with _webhook_client(origin, resolver, backend) as client:
            response = await client.post(f"{origin}/hook", content=b"{}")
        assert response.status_code == 200
        assert backend.connects == [("127.0.0.1", listener.port)]
        assert f"Host: receiver.example.test:{listener.port}".encode() in listener.requests[0]
