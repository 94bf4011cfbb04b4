"""The dev authorization server's HTML: the approvals page (the user's phone) and the dev login page.

The markup, CSS and script are long and change for looks only, so they live apart from the handlers. The
approvals page refreshes its list from `/approvals/requests` every second and counts down each request's
expiry; without JavaScript it reloads every 5 s and its buttons post plain forms. Every value shown is
HTML-escaped: binding messages and RAR details come from clients.
"""

from __future__ import annotations

import hashlib
import html
import json
import time
from typing import Any

from devservers.authz.state import AuthzState

__all__ = ["approvals_page", "login_page", "requests_fragment"]

_STYLE = """
:root { --bg:#f6f7f9; --card:#fff; --ink:#1d2330; --muted:#667085; --line:#e4e7ec;
        --ok:#12805c; --no:#b42318; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; background:var(--bg);
       color:var(--ink); }
header { background:#101828; color:#fff; padding:14px 20px; }
header h1 { margin:0; font-size:18px; font-weight:600; }
header p { margin:2px 0 0; color:#98a2b3; font-size:13px; }
main { max-width:760px; margin:0 auto; padding:20px; }
nav.users { display:flex; gap:8px; margin-bottom:16px; flex-wrap:wrap; }
nav.users a { padding:4px 12px; border-radius:999px; border:1px solid var(--line); background:#fff;
              color:var(--ink); text-decoration:none; font-size:13px; }
nav.users a.active { background:#101828; color:#fff; border-color:#101828; }
h2 { font-size:14px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); margin:22px 0 8px; }
article.request { background:var(--card); border:1px solid var(--line); border-radius:12px; padding:16px;
                  margin-bottom:12px; box-shadow:0 1px 2px rgba(16,24,40,.05); }
.request .top { display:flex; justify-content:space-between; gap:12px; align-items:baseline; }
.request .user { font-size:13px; color:var(--muted); }
.request .binding { font-size:20px; font-weight:600; margin:6px 0 8px; }
.request .meta { font-size:13px; color:var(--muted); }
.request code, .tag { font:12px ui-monospace,SFMono-Regular,Menlo,monospace; }
.tag { display:inline-block; background:#eef2f6; border-radius:6px; padding:1px 6px; margin:0 4px 4px 0; }
.details { margin:8px 0 0; padding:8px 10px; background:#f9fafb; border-radius:8px; font-size:13px; }
.details dt { font-weight:600; } .details dd { margin:0 0 4px 12px; }
.countdown { font-variant-numeric:tabular-nums; font-size:13px; color:var(--muted); white-space:nowrap; }
.countdown.soon { color:var(--no); }
.actions { display:flex; gap:8px; margin-top:12px; }
.actions form { margin:0; }
button { font:inherit; border:0; border-radius:8px; padding:8px 18px; cursor:pointer; font-weight:600; }
button.approve { background:var(--ok); color:#fff; } button.deny { background:#fff; color:var(--no);
  border:1px solid #fda29b; }
button:disabled { opacity:.5; cursor:default; }
.empty { color:var(--muted); padding:24px; text-align:center; border:1px dashed var(--line);
         border-radius:12px; }
table.recent { width:100%; border-collapse:collapse; font-size:13px; background:#fff; border-radius:8px; }
table.recent td { border-top:1px solid var(--line); padding:6px 8px; }
.status-approved { color:var(--ok); } .status-denied, .status-expired { color:var(--no); }
"""

_SCRIPT = """
(function () {
  const list = document.getElementById('requests');
  const query = new URLSearchParams(location.search);
  const user = query.get('user');
  let skew = 0;
  function tick() {
    const now = Date.now() / 1000 + skew;
    document.querySelectorAll('.countdown[data-expires-at]').forEach(function (el) {
      const left = Math.max(0, Math.floor(parseFloat(el.dataset.expiresAt) - now));
      const clock = Math.floor(left / 60) + ':' + String(left % 60).padStart(2, '0');
      el.textContent = left > 0 ? 'expires in ' + clock : 'expired';
      el.classList.toggle('soon', left < 30);
    });
  }
  function adopt(html) {
    const holder = document.createElement('div');
    holder.innerHTML = html;
    const fresh = holder.firstElementChild;
    if (!fresh) return;
    skew = parseFloat(fresh.dataset.serverNow) - Date.now() / 1000;
    if (fresh.dataset.signature !== list.dataset.signature) { list.replaceWith(fresh); wire(fresh); }
  }
  async function refresh() {
    try {
      const url = '/approvals/requests' + (user ? '?user=' + encodeURIComponent(user) : '');
      const response = await fetch(url, { cache: 'no-store' });
      if (response.ok) adopt(await response.text());
    } catch (e) { /* the server may be restarting; try again */ }
  }
  function wire(root) {
    root.querySelectorAll('form[data-action]').forEach(function (form) {
      form.addEventListener('submit', async function (event) {
        event.preventDefault();
        const article = form.closest('article');
        article.querySelectorAll('button').forEach(function (b) { b.disabled = true; });
        await fetch('/dev/ciba/requests/' + encodeURIComponent(article.dataset.requestId) + '/' +
                    form.dataset.action, { method: 'POST' });
        await refresh();
      });
    });
  }
  wire(document);
  adopt(list.outerHTML);
  tick();
  setInterval(tick, 250);
  setInterval(refresh, 1000);
})();
"""

_LOGIN_SCRIPT = """
document.getElementById('login').addEventListener('submit', async function (event) {
  event.preventDefault();
  const response = await fetch('/dev/login', { method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username: document.getElementById('username').value }) });
  const body = await response.json();
  document.getElementById('token').textContent = response.ok ? body.access_token : body.error_description;
});"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _details_html(details: list[dict[str, Any]] | None) -> str:
    if not details:
        return ""
    parts = []
    for entry in details:
        rows = "".join(
            f"<dt>{_esc(k)}</dt><dd>{_esc(v if isinstance(v, str) else json.dumps(v))}</dd>"
            for k, v in entry.items()
            if k != "type"
        )
        parts.append(f'<dl class="details"><dt>Action</dt><dd><code>{_esc(entry.get("type"))}</code></dd>{rows}</dl>')
    return "".join(parts)


def _request_card(row: dict[str, Any]) -> str:
    rid = _esc(row["id"])
    scopes = "".join(f'<span class="tag">{_esc(s)}</span>' for s in row["scope"].split())
    return f"""
<article class="request" data-request-id="{rid}">
  <div class="top"><span class="user">Request for <strong>{_esc(row["user"])}</strong></span>
    <span class="countdown" data-expires-at="{row["expires_at"]:.3f}">expires soon</span></div>
  <div class="binding">{_esc(row["binding_message"])}</div>
  <div class="meta">Scopes: {scopes}</div>
  <div class="meta">Audience: <code>{_esc(row["audience"])}</code></div>
  {_details_html(row["authorization_details"])}
  <div class="actions">
    <form method="post" action="/approvals/{rid}/approve" data-action="approve">
      <button class="approve" type="submit">Approve</button></form>
    <form method="post" action="/approvals/{rid}/deny" data-action="deny">
      <button class="deny" type="submit">Deny</button></form>
  </div>
</article>"""


def requests_fragment(state: AuthzState, user: str | None) -> str:
    """The list part of the approvals page (what its script fetches): waiting requests, then recent ones."""
    rows = state.list_requests(user)
    pending = [r for r in rows if r["status"] == "pending"]
    recent = sorted((r for r in rows if r["status"] != "pending"), key=lambda r: -(r["decided_at"] or r["expires_at"]))
    signature = hashlib.sha256(json.dumps([(r["id"], r["status"]) for r in rows[-50:]]).encode()).hexdigest()[:16]
    cards = "".join(_request_card(r) for r in pending) or '<div class="empty">No requests are waiting.</div>'
    history = "".join(
        f"<tr><td>{_esc(r['user'])}</td><td>{_esc(r['binding_message'])}</td>"
        f'<td class="status-{_esc(r["status"])}">{_esc(r["status"])}</td></tr>'
        for r in recent[:10]
    )
    recent_html = f'<h2>Recent</h2><table class="recent">{history}</table>' if history else ""
    return (
        f'<section id="requests" data-signature="{signature}" data-server-now="{time.time():.3f}">'
        f"<h2>Waiting for approval ({len(pending)})</h2>{cards}{recent_html}</section>"
    )


def approvals_page(state: AuthzState, user: str | None) -> str:
    """The whole approvals page, for everyone or for one `user` (a username or a sub)."""
    links = ['<a href="/approvals"' + (' class="active"' if not user else "") + ">Everyone</a>"]
    for name in state.users:
        active = ' class="active"' if user in (name, state.users[name]) else ""
        links.append(f'<a href="/approvals?user={_esc(name)}"{active}>{_esc(name)}</a>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Approvals - dev authorization server</title><style>{_STYLE}</style>
<noscript><meta http-equiv="refresh" content="5"></noscript></head>
<body><header><h1>Approval requests</h1>
<p>The user's phone, played by the dev authorization server at {_esc(state.issuer)}</p></header>
<main><nav class="users">{"".join(links)}</nav>
{requests_fragment(state, user)}
</main><script>{_SCRIPT}</script></body></html>"""


def login_page(state: AuthzState) -> str:
    """The dev login page: pick a user, get an access token for the API audience."""
    options = "".join(f'<option value="{_esc(n)}">{_esc(n)}</option>' for n in state.users)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Dev login</title><style>{_STYLE}
pre {{ white-space:pre-wrap; word-break:break-all; background:#fff; border:1px solid var(--line);
      padding:10px; border-radius:8px; font-size:12px; }}</style></head>
<body><header><h1>Dev login</h1>
<p>Access tokens for {_esc(state.api_audience)} (development only)</p></header>
<main><form id="login" method="post" action="/dev/login">
<label>User <select id="username" name="username">{options}</select></label>
<button class="approve" type="submit">Get token</button></form><pre id="token"></pre></main>
<script>{_LOGIN_SCRIPT}</script></body></html>"""
