"""Authentication over the WebSocket and HTTP, for each authenticator: open, users, jwt (HS256, ES256), http."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import (
    ALICE_API_TOKEN, AUDIENCE, HOST, ISSUER, JWT_SECRET, PASSWORDS, basic, bearer,
)


def hs256(claims: Dict[str, Any], secret: str = JWT_SECRET, **overrides) -> str:
    now = int(time.time())
    body = {"sub": "dave", "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 600}
    body.update(claims)
    body.update(overrides)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, algorithm="HS256")


async def expect_auth_failed(ws, **credentials) -> Dict[str, Any]:
    answer = await ws.auth(**credentials)
    assert answer["type"] == "error" and answer["code"] == "auth_failed", answer
    return answer


# --------------------------------------------------------------------------------------
# open
# --------------------------------------------------------------------------------------


async def test_open_accepts_anyone(cluster, clients):
    ws = await clients.open(cluster[0])
    welcome = await ws.login(user="zed", password="whatever")
    assert welcome["user"]["id"] == "zed" and welcome["v"] == 1 and welcome["session"]
    anonymous = await clients.open(cluster[0])
    assert (await anonymous.login())["user"]["id"] == "anonymous"
    # HTTP without credentials: only `open` lets it through.
    status, body = cluster[0].http("POST", "/v1/publish", {"subject": "open.x", "data": 1})
    assert status == 200 and body["ok"] is True, (status, body)


# --------------------------------------------------------------------------------------
# users
# --------------------------------------------------------------------------------------


async def test_users_password_and_api_token(main_node, clients):
    ws = await clients.open(main_node)
    welcome = await ws.login(user="alice", password=PASSWORDS["alice"])
    assert welcome["user"] == {"id": "alice", "roles": ["member"]}, welcome
    by_token = await clients.open(main_node)
    assert (await by_token.login(token=ALICE_API_TOKEN))["user"]["id"] == "alice"
    carol = await clients.open(main_node)
    assert (await carol.login(user="carol", password=PASSWORDS["carol"]))["user"]["roles"] == ["admin"]


async def test_users_failures(main_node, clients):
    ws = await clients.open(main_node)
    await expect_auth_failed(ws, user="alice", password="not-her-password")
    await expect_auth_failed(ws, user="mallory", password="anything")  # no authenticator takes her
    # The third failure closes the connection (policy violation).
    await expect_auth_failed(ws, token="an-unknown-api-token")
    assert await ws.wait_closed() == 1008
    # Actions before auth are refused; the connection stays.
    other = await clients.open(main_node)
    answer = await other.call({"type": "subscribe", "subject": "users.alice.x"})
    assert answer["code"] == "not_authenticated", answer
    assert (await other.call({"type": "ping"}))["type"] == "pong"
    await other.login(user="bob", password=PASSWORDS["bob"])


# --------------------------------------------------------------------------------------
# jwt HS256 (on the main node, after users)
# --------------------------------------------------------------------------------------


async def test_jwt_hs256_accepts_and_claims_reach_the_rules(main_node, clients):
    token = hs256({"sub": "dave", "roles": ["admin"], "data": {"rooms": ["r7"]}})
    ws = await clients.open(main_node)
    welcome = await ws.login(token=token)
    assert welcome["user"] == {"id": "dave", "roles": ["admin"]}, welcome
    # The roles claim: admins may publish on public.>.
    assert (await ws.call({"type": "publish", "subject": "public.news", "data": {"t": 1}}))["type"] == "ok"
    # The data claim: user.data.rooms.
    assert (await ws.call({"type": "subscribe", "subject": "rooms.r7.messages"}))["type"] == "ok"
    answer = await ws.call({"type": "subscribe", "subject": "rooms.r1.messages"})
    assert answer["code"] == "forbidden", answer
    # A member's token: no publishing on public.>.
    member = await clients.open(main_node)
    await member.login(token=hs256({"sub": "erin", "roles": ["member"]}))
    answer = await member.call({"type": "publish", "subject": "public.news", "data": {"t": 2}})
    assert answer["code"] == "forbidden", answer


@pytest.mark.parametrize(
    "why, token",
    [
        ("expired", lambda: hs256({}, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)),
        ("wrong audience", lambda: hs256({}, aud="another-app")),
        ("wrong issuer", lambda: hs256({}, iss="https://evil.example")),
        ("bad signature", lambda: hs256({}, secret="another secret of thirty-two bytes or more!!")),
        ("no exp", lambda: hs256({}, exp=None)),
        ("no sub", lambda: hs256({}, sub=None)),
        ("alg none", lambda: jwt.encode({"sub": "dave", "aud": AUDIENCE, "iss": ISSUER,
                                         "exp": int(time.time()) + 600}, None, algorithm="none")),
        ("tampered payload", lambda: _tamper(hs256({"roles": ["member"]}))),
    ],
)
async def test_jwt_hs256_rejects(main_node, clients, why, token):
    ws = await clients.open(main_node)
    await expect_auth_failed(ws, token=token())
    # HTTP too: 401.
    status, body = main_node.http("POST", "/v1/publish", {"subject": "public.x", "data": 1}, headers=bearer(token()))
    assert status == 401 and body["error"]["code"] == "auth_failed", (why, status, body)


def _tamper(token: str) -> str:
    import base64

    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = ["admin"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


# --------------------------------------------------------------------------------------
# jwt ES256 (a node of its own: one algorithm per jwt entry)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def es256(nodes):
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    workdir = nodes.workdir("es256")
    pem = os.path.join(workdir, "auth.pem")
    with open(pem, "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    gateway = {
        "auth": [{"type": "jwt", "algorithm": "ES256", "publicKeyFile": pem, "audience": AUDIENCE}],
        "permissions": {"rules": [
            {"subject": "public.>", "subscribe": True, "publish": "'admin' in user.roles"},
            {"subject": "rooms.$room.messages", "subscribe": "$room in user.data.rooms"},
        ]},
    }
    node = nodes.single("es", gateway, workdir=workdir)

    def sign(signer=key, **overrides) -> str:
        now = int(time.time())
        claims = {"sub": "frank", "aud": AUDIENCE, "exp": now + 600, "roles": ["admin"], "data": {"rooms": ["r3"]}}
        claims.update(overrides)
        return jwt.encode(claims, signer, algorithm="ES256")

    return node, sign


async def test_jwt_es256_accepts(es256, clients):
    node, sign = es256
    ws = await clients.open(node)
    welcome = await ws.login(token=sign())
    assert welcome["user"] == {"id": "frank", "roles": ["admin"]}, welcome
    assert (await ws.call({"type": "subscribe", "subject": "rooms.r3.messages"}))["type"] == "ok"
    assert (await ws.call({"type": "subscribe", "subject": "rooms.r4.messages"}))["code"] == "forbidden"
    assert (await ws.call({"type": "publish", "subject": "public.a", "data": 1}))["type"] == "ok"
    status, body = node.http("POST", "/v1/publish", {"subject": "public.a", "data": 2}, headers=bearer(sign()))
    assert status == 200 and body["ok"] is True, (status, body)


async def test_jwt_es256_rejects(es256, clients):
    node, sign = es256
    other = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    bad = {
        "bad signature": sign(signer=other),
        "expired": sign(exp=now - 3600),
        "wrong audience": sign(aud="someone-else"),
        "HS256 instead": jwt.encode({"sub": "frank", "aud": AUDIENCE, "exp": now + 600}, JWT_SECRET,
                                    algorithm="HS256"),
    }
    for why, token in bad.items():
        ws = await clients.open(node)
        answer = await ws.auth(token=token)
        assert answer["type"] == "error" and answer["code"] == "auth_failed", (why, answer)
    # Passwords: no authenticator takes them here.
    ws = await clients.open(node)
    await expect_auth_failed(ws, user="frank", password="x")


# --------------------------------------------------------------------------------------
# http: the user's app decides
# --------------------------------------------------------------------------------------

APP_SECRET = "app-shared-secret"


class AuthApp:
    """The user's app on 127.0.0.1: accepts erin/pw-erin (object body), token tok-gina (string body), and token
    tok-flaky after one 503; 401 for everything else, and for requests without the configured header."""

    def __init__(self) -> None:
        self.requests: List[Dict[str, Any]] = []
        self.lock = threading.Lock()
        self.flaky_seen = 0
        self.port = 0
        self.server = None
        self.thread = None

    def start(self) -> None:
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                status, answer = app.decide(self.headers.get("X-Stork-Secret"), body)
                raw = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                # No keep-alive: a pooled connection would outlive stop(), and "unreachable" must be unreachable.
                self.send_header("Connection", "close")
                self.close_connection = True
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer((HOST, self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def decide(self, secret, body):
        with self.lock:
            self.requests.append(body)
            if secret != APP_SECRET:
                return 401, {"error": "no secret"}
            if body.get("user") == "erin" and body.get("password") == "pw-erin":
                return 200, {"id": "erin", "roles": ["member"], "data": {"rooms": ["r5"]}}
            if body.get("token") == "tok-gina":
                return 200, "gina"
            if body.get("token") == "tok-flaky":
                self.flaky_seen += 1
                if self.flaky_seen % 2 == 1:
                    return 503, {"error": "try again"}
                return 200, {"id": "flaky"}
            return 401, {"error": "no"}


@pytest.fixture(scope="module")
def http_auth(nodes):
    app = AuthApp()
    app.start()
    gateway = {
        "auth": [{"type": "http", "url": f"http://{HOST}:{app.port}/stork/auth",
                  "headers": {"X-Stork-Secret": APP_SECRET},
                  "retryAttempts": 1, "retryInterval": "100ms", "timeout": "3s"}],
        "permissions": {"rules": [
            {"subject": "users.$userId.>", "subscribe": "user.id == $userId", "publish": "user.id == $userId"},
            {"subject": "rooms.$room.messages", "subscribe": "$room in user.data.rooms"},
        ]},
    }
    try:
        node = nodes.single("http", gateway)
        yield node, app
    finally:
        app.stop()


async def test_http_authenticator_accepts(http_auth, clients):
    node, app = http_auth
    ws = await clients.open(node)
    welcome = await ws.login(user="erin", password="pw-erin")
    assert welcome["user"] == {"id": "erin", "roles": ["member"]}, welcome
    # The app's data reaches the rules.
    assert (await ws.call({"type": "subscribe", "subject": "rooms.r5.messages"}))["type"] == "ok"
    assert (await ws.call({"type": "subscribe", "subject": "rooms.r6.messages"}))["code"] == "forbidden"
    assert (await ws.call({"type": "subscribe", "subject": "users.erin.feed"}))["type"] == "ok"
    gina = await clients.open(node)
    assert (await gina.login(token="tok-gina"))["user"]["id"] == "gina"
    # A 503 is retried (retryAttempts: 1).
    flaky = await clients.open(node)
    assert (await flaky.login(token="tok-flaky"))["user"]["id"] == "flaky"
    # What the app was sent.
    with app.lock:
        sent = list(app.requests)
    erin = next(r for r in sent if r.get("user") == "erin")
    assert erin["password"] == "pw-erin" and "connectionData" in erin, erin
    assert any(r.get("token") == "tok-gina" for r in sent)
    # HTTP calls use the same chain.
    status, body = node.http("POST", "/v1/publish", {"subject": "users.erin.feed", "data": {"a": 1}},
                             headers=basic("erin", "pw-erin"))
    assert status == 200 and body["ok"] is True, (status, body)


async def test_http_authenticator_rejects(http_auth, clients):
    node, app = http_auth
    ws = await clients.open(node)
    await expect_auth_failed(ws, user="erin", password="wrong")
    await expect_auth_failed(ws, token="tok-unknown")
    status, body = node.http("POST", "/v1/publish", {"subject": "users.erin.feed", "data": 1},
                             headers=basic("erin", "wrong"))
    assert status == 401, (status, body)
    # The app unreachable: rejected, never let in.
    app.stop()
    try:
        down = await clients.open(node)
        await expect_auth_failed(down, user="erin", password="pw-erin")
    finally:
        app.start()  # the same port again
    back = await clients.open(node)
    assert (await back.login(user="erin", password="pw-erin"))["user"]["id"] == "erin"


# --------------------------------------------------------------------------------------
# HTTP publish with Bearer and Basic (main node)
# --------------------------------------------------------------------------------------


async def test_http_publish_bearer_and_basic(main_node, clients):
    ws = await clients.login(main_node, user="alice", password=PASSWORDS["alice"])
    await ws.subscribe("users.alice.http")
    cases = [
        ("basic", basic("alice", PASSWORDS["alice"])),
        ("api token", bearer(ALICE_API_TOKEN)),
        ("jwt", bearer(hs256({"sub": "alice"}))),
    ]
    for i, (how, headers) in enumerate(cases):
        status, body = main_node.http("POST", "/v1/publish", {"subject": "users.alice.http", "data": {"n": i}},
                                      headers=headers)
        assert status == 200 and body == {"ok": True, "delivered": 1}, (how, status, body)
        message = await ws.next_message(subject="users.alice.http")
        assert message["data"] == {"n": i}, (how, message)
    # Failures: wrong password 401, no credentials 401 (no open authenticator), someone else's channel 403,
    # an inbox is writable by others, a bad body 400.
    status, body = main_node.http("POST", "/v1/publish", {"subject": "users.alice.http", "data": 1},
                                  headers=basic("alice", "nope"))
    assert status == 401 and body["error"]["code"] == "auth_failed", (status, body)
    status, body = main_node.http("POST", "/v1/publish", {"subject": "users.alice.http", "data": 1})
    assert status == 401, (status, body)
    status, body = main_node.http("POST", "/v1/publish", {"subject": "users.alice.http", "data": 1},
                                  headers=basic("bob", PASSWORDS["bob"]))
    assert status == 403 and body["error"]["code"] == "forbidden", (status, body)
    status, body = main_node.http("POST", "/v1/publish", {"subject": "users.alice.inbox", "data": 1},
                                  headers=basic("bob", PASSWORDS["bob"]))
    assert status == 200, (status, body)
    status, body = main_node.http("POST", "/v1/publish", b"not json", headers=basic("alice", PASSWORDS["alice"]))
    assert status == 400, (status, body)
    # Nothing else reached the subscriber.
    assert (await ws.call({"type": "ping"}))["type"] == "pong"
    assert not ws.messages(), ws.messages()
