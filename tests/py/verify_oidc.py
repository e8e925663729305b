"""An independent OIDC verifier for tokenbridge's issuer mode: PyJWT, not our code.

Usage: verify_oidc.py BASE_URL CA_FILE ISSUER AUDIENCE < tokens (one per line)

Fetches BASE_URL/.well-known/openid-configuration over HTTPS (trusting CA_FILE),
checks its `issuer`, fetches the JWKS at the path of its `jwks_uri` from the same
host (BASE_URL stands in for the issuer's public host name), and verifies every
token with PyJWT's JWKS client: signature by `kid`, `iss`, `aud`, `exp`, `iat`.
Prints one JSON object per token: its claims, or {"error": ...}.
"""

import json
import ssl
import sys
import urllib.parse
import urllib.request

import jwt


def main() -> None:
    base, ca_file, issuer, audience = sys.argv[1:5]
    ctx = ssl.create_default_context(cafile=ca_file)
    with urllib.request.urlopen(base + "/.well-known/openid-configuration", context=ctx) as r:
        config = json.load(r)
    if config["issuer"] != issuer:
        raise SystemExit(f"discovery names issuer {config['issuer']!r}, expected {issuer!r}")
    jwks_path = urllib.parse.urlsplit(config["jwks_uri"]).path
    client = jwt.PyJWKClient(base + jwks_path, cache_keys=False, ssl_context=ctx)
    algorithms = config["id_token_signing_alg_values_supported"]
    for line in sys.stdin:
        token = line.strip()
        if not token:
            continue
        try:
            key = client.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=algorithms,
                audience=audience,
                issuer=issuer,
                options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
            )
            print(json.dumps(claims), flush=True)
        except jwt.PyJWTError as e:
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)


if __name__ == "__main__":
    main()
