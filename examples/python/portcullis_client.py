#!/usr/bin/env python3
"""Calling services behind portcullis from Python with `requests`.

Three ways in, each a function you can copy:

- a client certificate (mutual TLS), for services and scripts that hold one;
- an API key, for batch jobs;
- the login flow for people: password plus a one-time code (computed here with pyotp, as an
  authenticator app does), exchanged once for a short-lived token that stands in for both.

Run it against a gateway to see all three (every flag is optional; what is missing is skipped):

    pip install requests pyotp PyJWT cryptography
    python3 portcullis_client.py --url https://localhost:8443 --ca certs/ca.crt \
        --cert certs/clients/reader-bob.crt --key certs/clients/reader-bob.key \
        --api-key pk_... --user alice --password 'correct horse' --totp-secret KBDH... \
        --path /docs
"""

import argparse
import sys

import jwt  # PyJWT
import pyotp
import requests


class GatewaySession(requests.Session):
    """A requests session that trusts the gateway's CA.

    Setting `session.verify = ca` is not enough: when REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE is
    set (many Docker images and CI machines set it), requests prefers it to the session's
    setting and the gateway's private CA is not trusted. Passing verify with each request wins.
    """

    def __init__(self, ca):
        super().__init__()
        self.ca = ca

    def request(self, method, url, **kwargs):
        kwargs.setdefault("verify", self.ca)
        return super().request(method, url, **kwargs)


def certificate_session(ca, cert, key):
    """A session that trusts the gateway's CA and presents a client certificate."""
    s = GatewaySession(ca)
    s.cert = (cert, key)
    return s


def api_key_session(ca, api_key, header="x-api-key"):
    """A session that sends an API key on every request."""
    s = GatewaySession(ca)
    s.headers[header] = api_key
    return s


def login(url, ca, user, password, totp_secret, otp_header="x-otp", login_path="/auth/login"):
    """Logs in with a password and the current one-time code; returns the token response.

    A code is good once: log in, then use the token until it expires (expires_in seconds).
    """
    code = pyotp.TOTP(totp_secret).now()
    r = requests.post(url + login_path, auth=(user, password), headers={otp_header: code}, verify=ca)
    r.raise_for_status()
    return r.json()


def token_session(ca, access_token):
    """A session that sends the gateway's token instead of the password."""
    s = GatewaySession(ca)
    s.headers["Authorization"] = "Bearer " + access_token
    return s


def verify_token(url, ca, token, audience="portcullis", issuer="portcullis",
                 jwks_path="/.well-known/jwks.json"):
    """Checks a gateway token the way an upstream service can: against the published JWKS."""
    jwks = requests.get(url + jwks_path, verify=ca).json()
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(jwt.PyJWK(k) for k in jwks["keys"] if k["kid"] == kid)
    return jwt.decode(token, key.key, algorithms=["EdDSA", "ES256"], audience=audience,
                      issuer=issuer)


def logout(url, ca, access_token, logout_path="/auth/logout"):
    """Revokes the token (on every replica when the gateways share Redis)."""
    r = requests.post(url + logout_path, headers={"Authorization": "Bearer " + access_token},
                      verify=ca)
    r.raise_for_status()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="the gateway, e.g. https://localhost:8443")
    p.add_argument("--ca", required=True, help="the CA that signed the gateway's certificate")
    p.add_argument("--path", default="/", help="what to ask for")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--api-key")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--totp-secret")
    a = p.parse_args()
    target = a.url + a.path

    if a.cert and a.key:
        r = certificate_session(a.ca, a.cert, a.key).get(target)
        print(f"certificate: {r.status_code}")
    if a.api_key:
        r = api_key_session(a.ca, a.api_key).get(target)
        print(f"api key: {r.status_code}")
    if a.user and a.password and a.totp_secret:
        tokens = login(a.url, a.ca, a.user, a.password, a.totp_secret)
        token = tokens["access_token"]
        print(f"login: {tokens['token_type']} token for {tokens['expires_in']} s")
        claims = verify_token(a.url, a.ca, token)
        print(f"token: sub={claims['sub']} amr={','.join(claims['amr'])}")
        r = token_session(a.ca, token).get(target)
        print(f"with the token: {r.status_code}")
        logout(a.url, a.ca, token)
        r = token_session(a.ca, token).get(target)
        print(f"after logout: {r.status_code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
