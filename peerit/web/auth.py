"""Who may use the web page: one-time login tokens, sessions, the optional password.

The Jupyter model: ``peerit-ctl ui`` asks the daemon (over its owner-only control socket) for
a URL carrying a one-time token; the page trades the token for a session, kept in an HttpOnly
SameSite=Strict cookie, and each session has its own CSRF token that the page's scripts send
back in a header on every request that changes something. A daemon whose page is reachable
from other machines also accepts a password (read from a file) for a session.

Logic only, on an injected clock: the HTTP side (``peerit.web.site``) asks and enforces.
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass

TOKEN_LIFETIME = 600.0  # seconds a login URL stays good (once)
SESSION_IDLE = 12 * 3600.0  # a session unused this long is forgotten
MAX_TOKENS = 16  # unredeemed tokens kept; older ones are dropped first
MAX_SESSIONS = 64  # sessions kept; the least recently used is dropped first
PASSWORD_TRIES = 5  # failed passwords allowed per PASSWORD_WINDOW...
PASSWORD_WINDOW = 60.0  # ...seconds, over all clients (there are few users, many guesses)
MAX_PASSWORD_BYTES = 1024
CSRF_HEADER = "X-Peerit-CSRF"


def _digest(secret: str) -> bytes:
    # Looked up by digest: a dict probe on the secret itself would compare its bytes.
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


@dataclass
class Session:
    key: str  # the cookie's value
    csrf: str  # what the page sends back in CSRF_HEADER
    last_seen: float


class Auth:
    def __init__(self, clock, password: str | None = None, token=secrets.token_urlsafe):
        self.clock = clock
        self._password = _digest(password) if password else None
        self._token = token  # nbytes -> str; injectable for tests
        self._tokens: dict[bytes, float] = {}  # digest -> expires at
        self._sessions: dict[bytes, Session] = {}  # digest of key -> session
        self._failures: list[float] = []

    @property
    def has_password(self) -> bool:
        return self._password is not None

    # -- one-time tokens ------------------------------------------------------------------
    def mint_token(self) -> str:
        now = self.clock.seconds()
        self._expire(now)
        while len(self._tokens) >= MAX_TOKENS:
            del self._tokens[min(self._tokens, key=self._tokens.get)]
        token = self._token(32)
        self._tokens[_digest(token)] = now + TOKEN_LIFETIME
        return token

    def redeem_token(self, token: str) -> Session | None:
        """A new session for a good token, which is then used up; None otherwise."""
        now = self.clock.seconds()
        self._expire(now)
        if not token or self._tokens.pop(_digest(token), None) is None:
            return None
        return self._new_session(now)

    # -- password -------------------------------------------------------------------------
    def login_password(self, password: str) -> Session | None:
        """A session for the right password; None for a wrong one or while throttled."""
        if self._password is None or len(password.encode("utf-8", "replace")) > \
                MAX_PASSWORD_BYTES:
            return None
        now = self.clock.seconds()
        self._failures = [t for t in self._failures if now - t < PASSWORD_WINDOW]
        if len(self._failures) >= PASSWORD_TRIES:
            return None
        if not hmac.compare_digest(_digest(password), self._password):
            self._failures.append(now)
            return None
        return self._new_session(now)

    # -- sessions -------------------------------------------------------------------------
    def session(self, key: str | None) -> Session | None:
        """The live session for a cookie value, marked as used now."""
        if not key:
            return None
        now = self.clock.seconds()
        session = self._sessions.get(_digest(key))
        if session is None or now - session.last_seen > SESSION_IDLE:
            self._sessions.pop(_digest(key), None)
            return None
        session.last_seen = now
        return session

    def check_csrf(self, session: Session, header: str | None) -> bool:
        return bool(header) and hmac.compare_digest(
            header.encode("utf-8", "replace"), session.csrf.encode())

    def logout(self, key: str) -> None:
        self._sessions.pop(_digest(key), None)

    def _new_session(self, now: float) -> Session:
        for digest, old in list(self._sessions.items()):
            if now - old.last_seen > SESSION_IDLE:
                del self._sessions[digest]
        while len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda d: self._sessions[d].last_seen)
            del self._sessions[oldest]
        session = Session(self._token(32), self._token(32), now)
        self._sessions[_digest(session.key)] = session
        return session

    def _expire(self, now: float) -> None:
        for digest, expires in list(self._tokens.items()):
            if expires <= now:
                del self._tokens[digest]
