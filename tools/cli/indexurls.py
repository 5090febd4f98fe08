"""Index URLs on the command line and in the environment: the one rule both `build-*` and `check-locks` keep.
A URL with a token goes in the environment (or a file), never on a command line."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

from tools.core.errors import UserError

ENV_INDEX_URL = "FLAGREL_INDEX_URL"
ENV_EXTRA_INDEX_URLS = "FLAGREL_EXTRA_INDEX_URLS"
_MORE = {"--index-url": ", or put the URL in a file only you can read and pass --index-url-file FILE",
         "--extra-index-url": "; several URLs are separated by spaces"}
_SECRET_KEY = re.compile(r"(?i)token|password|passwd|secret|key|auth|signature|sig$")


def no_credentials(flag: str, url: str, env_var: str) -> str:
    """A URL given on the command line is seen by `ps`, shell history and nox's echo: it must hold no secret."""
    parts = urlsplit(url)
    secret_query = [k for k, _ in parse_qsl(parts.query, keep_blank_values=True) if _SECRET_KEY.search(k)]
    if parts.username or parts.password or secret_query:
        shown = parts._replace(netloc=parts.hostname or "", query="").geturl()
        raise UserError(
            f"{flag} carries credentials ({'user:token@' if parts.username else 'a token in the query'}) on the "
            f"command line, where `ps`, shell history and session logs show them: {shown} (credentials not shown)",
            where=flag,
            fix=f"pass it in the environment: export {env_var}='https://USER:TOKEN@host/simple' (in CI from a secret)"
                + _MORE.get(flag, ""),
        )
    return url
