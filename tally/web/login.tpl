<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>Tally: log in</title>
<style>
  :root { --ink: #1d2433; --muted: #667085; --line: #e4e7ec; --bad: #c0362c; --bar: #3b6fd8; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); background: #f7f8fa; }
  main { max-width: 420px; margin: 10vh auto 0; padding: 16px; }
  h1 { font-size: 1.4rem; margin: 0 0 12px; }
  form, .note { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px; }
  label { display: block; margin-bottom: 6px; }
  input { width: 100%; font: inherit; padding: 8px; border: 1px solid var(--line); border-radius: 6px; }
  button { margin-top: 12px; font: inherit; padding: 8px 16px; border: 0; border-radius: 6px; background: var(--bar); color: #fff; cursor: pointer; }
  .message { color: var(--bad); margin: 0 0 12px; }
  .muted { color: var(--muted); font-size: .85rem; margin-top: 12px; }
</style>
</head>
<body>
<main>
  <h1>Tally</h1>
  % if message:
  <p class="message" id="login-message" role="alert">{{message}}</p>
  % end
  % if login_enabled:
  <form id="login-form" method="post" action="/login">
    <label for="token">These stats are private. Admin token:</label>
    <input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
    % if return_to:
    <input type="hidden" name="next" value="{{return_to}}">
    % end
    <button type="submit">Log in</button>
  </form>
  <p class="muted">The owner logs in with <code>ADMIN_TOKEN</code>; others need a share link.</p>
  % else:
  <p class="note">These stats are private and owner login is off: set <code>ADMIN_TOKEN</code>
    (or <code>PUBLIC_DASHBOARD=true</code>) and restart Tally.</p>
  % end
</main>
</body>
</html>
