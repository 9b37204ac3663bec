"""The bus reads the broker URL's credentials percent-decoded, as docs/security.md says."""

from dispatch.bus import Bus


def test_credentials_in_the_url_are_percent_decoded() -> None:
    bus = Bus("mqtt://eng%40ine:p%2Fss%3Aw%25rd@broker:1884", client_id="c", subscriptions=())
    assert (bus.username, bus.password) == ("eng@ine", "p/ss:w%rd")
    assert (bus.host, bus.port) == ("broker", 1884)
