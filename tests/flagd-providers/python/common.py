"""What the provider scripts share: the cluster's CA (CA) and its admin API (ADMIN_URL, TOKEN)."""

import json
import os
import ssl
import urllib.request

https = ssl.create_default_context(cafile=os.environ["CA"])


def admin(method, path, body=None):
    """An admin API call to ADMIN_URL; its JSON answer (HTTPError for a 4xx or 5xx)."""
    req = urllib.request.Request(
        os.environ["ADMIN_URL"] + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {os.environ['TOKEN']}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10, context=https) as r:
        return json.load(r)
