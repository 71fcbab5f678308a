"""``claudemesh-gateway <args>`` with Twilio's REST host resolved to a loopback fake.

The twilio library has no base-URL setting, so the WhatsApp gateway offers one test seam: its
``http_client_class`` (whose ``resolve(url)`` names the URL really requested). This launcher
installs a subclass that sends ``https://api.twilio.com/...`` to ``$CLAUDEMESH_TEST_TWILIO_BASE``
and then runs the real CLI entry point (``claudemesh_gateway.cli:main``, what the console script
calls), so the process is otherwise exactly ``claudemesh-gateway -c <config> run``. It refuses to
start without the variable: a test must never reach the real Twilio.

Usage: ``python twilio_loopback_run.py -c gateway.toml run``
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    base = os.environ.get("CLAUDEMESH_TEST_TWILIO_BASE", "").rstrip("/")
    if not base.startswith(("http://127.0.0.1:", "http://[::1]:")):
        print("CLAUDEMESH_TEST_TWILIO_BASE must be a loopback http:// URL", file=sys.stderr)
        return 2

    from claudemesh_gateway.cli import main as cli_main
    from claudemesh_gateway.plugins.whatsapp.gateway import WhatsAppGateway
    from claudemesh_gateway.plugins.whatsapp.transport import TwilioHttpClient

    class LoopbackTwilioHttp(TwilioHttpClient):
        def resolve(self, url: str) -> str:
            if not url.startswith("https://api.twilio.com/"):
                raise AssertionError(f"unexpected Twilio URL host: {url.split('/')[2] if '//' in url else url}")
            return base + url[len("https://api.twilio.com"):]

    WhatsAppGateway.http_client_class = LoopbackTwilioHttp
    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
