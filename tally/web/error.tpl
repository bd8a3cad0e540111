<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
% if refresh:
<meta http-equiv="refresh" content="{{refresh}}">
% end
<title>Tally: {{title}}</title>
<style>
  :root { --ink: #1d2433; --muted: #667085; --line: #e4e7ec; --bad: #c0362c; --bar: #3b6fd8; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); background: #f7f8fa; }
  main { max-width: 560px; margin: 10vh auto 0; padding: 16px; }
  h1 { font-size: 1.4rem; margin: 0 0 12px; }
  .note { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px; }
  .message { color: var(--bad); margin: 0 0 12px; }
  ul { margin: 0; padding-left: 1.2em; }
  li { margin: 4px 0; overflow-wrap: anywhere; }
  a { color: var(--bar); }
  .muted { color: var(--muted); font-size: .85rem; margin-top: 12px; }
</style>
</head>
<body>
<main>
  <h1>Tally</h1>
  <div class="note">
    <p class="message" id="error-message" role="alert">{{sentence}}</p>
    <ul id="ways-out">
    % for label, href in links:
      <li><a href="{{href}}">{{label}}</a></li>
    % end
    </ul>
  </div>
  <p class="muted">{{status}} {{title}}</p>
</main>
</body>
</html>
