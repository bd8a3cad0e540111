<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{report.subject}}</title>
</head>
<body style="margin:0;padding:0;background:#f7f8fa;color:#1d2433;font:15px/1.45 -apple-system,'Segoe UI',Helvetica,Arial,sans-serif;">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0" style="background:#f7f8fa;">
<tr><td align="center" style="padding:16px 8px;">
<table role="presentation" id="report" width="100%" cellpadding="0" cellspacing="0" style="max-width:600px;background:#ffffff;border:1px solid #e4e7ec;border-radius:8px;">
<tr><td style="padding:16px 16px 4px;">
  <h1 style="font-size:20px;margin:0 0 4px;">{{report.site_label}}</h1>
  <div style="color:#667085;font-size:13px;">Tally report, {{report.period.title}} (days in {{report.current['tz']}})</div>
</td></tr>
<tr><td style="padding:12px 16px;">
  <table role="presentation" width="100%" cellpadding="0" cellspacing="0">
  <tr>
  % for row in totals:
    <td class="total" width="50%" style="padding:8px;border:1px solid #e4e7ec;border-radius:6px;vertical-align:top;">
      <div style="color:#667085;font-size:13px;">{{row['name']}}</div>
      <div style="font-size:26px;font-weight:bold;" data-total="{{row['name'].lower()}}">{{f"{row['value']:,}"}}</div>
      <div style="color:#667085;font-size:13px;">{{row['change']}} against {{f"{row['before']:,}"}}</div>
    </td>
  % end
  </tr>
  </table>
</td></tr>
<tr><td style="padding:4px 16px 12px;">
  <div style="font-weight:bold;margin-bottom:6px;">Views per day</div>
  <table role="presentation" id="chart" width="100%" cellpadding="0" cellspacing="0" style="table-layout:fixed;">
  <tr>
  % for bar in chart:
    <td valign="bottom" title="{{bar['day']}}: {{bar['views']}} views, {{bar['visitors']}} visitors" style="padding:0 1px;vertical-align:bottom;height:{{bar['height'] + bar['rest']}}px;">
      % if bar['height']:
      <table role="presentation" width="100%" cellpadding="0" cellspacing="0"><tr><td class="bar" height="{{bar['height']}}" style="height:{{bar['height']}}px;background:#3b6fd8;font-size:0;line-height:0;">&nbsp;</td></tr></table>
      % end
    </td>
  % end
  </tr>
  <tr>
  % for bar in chart:
    <td align="center" style="color:#667085;font-size:11px;padding-top:2px;">{{bar['label']}}</td>
  % end
  </tr>
  </table>
</td></tr>
% for title, rows in tops:
<tr><td style="padding:4px 16px 12px;">
  <div style="font-weight:bold;margin-bottom:4px;">{{title}}</div>
  <table role="presentation" width="100%" cellpadding="0" cellspacing="0" style="border-collapse:collapse;font-size:14px;">
  % for row in rows:
    <tr>
      <td width="62%" style="padding:4px 0;border-bottom:1px solid #e4e7ec;word-break:break-all;">{{row['name']}}</td>
      <td align="right" style="padding:4px 0 4px 8px;border-bottom:1px solid #e4e7ec;white-space:nowrap;">{{f"{row['views']:,}"}}</td>
      <td align="right" style="padding:4px 0 4px 8px;border-bottom:1px solid #e4e7ec;color:#667085;font-size:12px;">{{row['change']}}</td>
    </tr>
  % end
  % if not rows:
    <tr><td style="padding:4px 0;color:#667085;">None in this period.</td></tr>
  % end
  </table>
</td></tr>
% end
<tr><td style="padding:8px 16px 16px;">
  <a href="{{report.link}}" style="display:inline-block;padding:8px 14px;background:#3b6fd8;color:#ffffff;text-decoration:none;border-radius:6px;">Open the dashboard</a>
</td></tr>
</table>
</td></tr>
</table>
</body>
</html>
