<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>Tally: job {{job['id']}}</title>
<style>
  :root { --ink: #1d2433; --muted: #667085; --line: #e4e7ec; --bad: #c0362c; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); background: #f7f8fa; }
  main { max-width: 1100px; margin: 0 auto; padding: 16px; }
  h1 { font-size: 1.4rem; margin: 0 0 8px; }
  h2 { font-size: 1.05rem; margin: 0 0 8px; }
  section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; margin-bottom: 16px; overflow-x: auto; }
  table { width: 100%; border-collapse: collapse; }
  th, td { text-align: left; padding: 5px 6px; border-bottom: 1px solid var(--line); vertical-align: top; }
  pre { white-space: pre-wrap; word-break: break-word; margin: 0; font-size: .85rem; }
  button { font: inherit; padding: 2px 10px; border: 1px solid var(--line); border-radius: 6px; background: #fff; cursor: pointer; }
  .muted { color: var(--muted); font-size: .85rem; }
  .failed { color: var(--bad); }
  #notice { background: #eef4ff; border: 1px solid #b6cdf7; border-radius: 8px; padding: 8px 12px; margin-bottom: 12px; }
</style>
</head>
<body>
<main>
  <h1>Job {{job['id']}}: {{job['task']}} <a class="muted" href="/jobs">all jobs</a></h1>
  % if notice:
  <p id="notice" role="status">{{notice}}</p>
  % end
  <section>
    <table id="job">
      <tr><th>Status</th><td id="job-status" class="{{'failed' if job['status'] == 'failed' else ''}}">{{job['status']}}</td></tr>
      <tr><th>Queue</th><td>{{job['queue']}}</td></tr>
      <tr><th>Attempts</th><td id="job-attempts">{{job['attempts']}}</td></tr>
      <tr><th>Worker</th><td id="job-worker">{{'worker ' + str(job['worker_id']) if job['worker_id'] is not None else 'none now'}}{{(', failed on ' + ', '.join(sorted({e['worker'] for e in errors if e['worker']}))) if any(e['worker'] for e in errors) else ''}}</td></tr>
      <tr><th>Lock</th><td>{{job['lock'] or ''}}</td></tr>
      <tr><th>Priority</th><td>{{job['priority']}}</td></tr>
      <tr><th>Scheduled</th><td id="job-scheduled">{{scheduled}}</td></tr>
      % if waits:
      <tr><th>Waits</th><td id="job-waits">
        % for reason in waits:
        <div>{{reason[0]}}
          % if len(reason) > 1:
          <a href="/jobs/{{reason[1]}}">job {{reason[1]}}</a>{{reason[2]}}
          % end
        </div>
        % end
      </td></tr>
      % end
      <tr><th>Times in</th><td>{{zone}}</td></tr>
      <tr><th>Arguments</th><td><pre id="job-args">{{args}}</pre></td></tr>
    </table>
    % if job['status'] in ('failed', 'cancelled', 'aborted'):
    <form class="retry-form" method="post" action="/api/jobs/{{job['id']}}/retry"><input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="next" value="{{here}}"><button type="submit">Retry</button></form>
    % elif job['status'] in ('todo', 'doing'):
    <form class="cancel-form" method="post" action="/api/jobs/{{job['id']}}/cancel"><input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="next" value="{{here}}"><button type="submit">{{'Cancel' if job['status'] == 'todo' else 'Abort'}}</button></form>
    % end
  </section>
  <section>
    <h2>Events</h2>
    <table id="events">
      <tr><th>When</th><th>Event</th></tr>
      % for event in events:
      <tr><td>{{when(event['at'])}}</td><td>{{event['type']}}</td></tr>
      % end
    </table>
  </section>
  <section>
    <h2>Errors</h2>
    <table id="errors">
      <tr><th>Attempt</th><th>When</th><th>Worker</th><th>Error</th></tr>
      % for error in errors:
      <tr><td>{{error['attempt']}}</td><td>{{when(error['failed_at'])}}</td><td>{{error['worker'] or ''}}</td><td><b class="failed">{{error['error']}}</b>
        % if error['traceback']:
        <pre class="traceback">{{error['traceback']}}</pre>
        % end
      </td></tr>
      % end
      % if not errors:
      <tr><td colspan="4" class="muted">No error recorded.</td></tr>
      % end
    </table>
  </section>
</main>
</body>
</html>
