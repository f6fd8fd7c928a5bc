/**
 * URLs as they may be shown in a log line or a message: a notifier's URL
 * (src/notifications.ts) may carry its credentials, in its userinfo
 * (`https://user:token@host/`), its query (`?token=...`) or its path
 * (Slack's and Discord's webhook URLs are `/services/T0/B0/<24-character
 * token>`, `/api/webhooks/<id>/<68-character token>`). Journald's log is
 * readable by more people than the root-owned config is.
 */

/** A path segment at least this long is taken for a token and hidden: real words in a webhook's path are shorter. */
const TOKEN_SEGMENT_CHARS = 16;

const SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i;

/**
 * `url` with its userinfo, query, fragment and every path segment of
 * TOKEN_SEGMENT_CHARS or more replaced by `***`:
 * `https://***@hooks.example.com/services/***?***`. A string that is not a
 * URL but starts like one is cut after its scheme.
 */
export function redactUrl(url: string): string {
  if (!URL.canParse(url)) {
    const scheme = SCHEME.exec(url)?.[0];
    return scheme === undefined ? url : `${scheme}***`;
  }
  const u = new URL(url);
  const userinfo = u.username !== '' || u.password !== '' ? '***@' : '';
  const pathname = u.pathname.split('/').map((seg) => (seg.length >= TOKEN_SEGMENT_CHARS ? '***' : seg)).join('/');
  // Opaque URLs (mailto:) have no host: nothing of theirs is shown.
  if (u.host === '' && !url.startsWith(`${u.protocol}//`)) return `${u.protocol}***`;
  return `${u.protocol}//${userinfo}${u.host}${pathname}${u.search === '' ? '' : '?***'}${u.hash === '' ? '' : '#***'}`;
}

/** Whether `s` starts like a URL (`scheme://`): what describe() redacts wherever it appears in a value. */
export function looksLikeUrl(s: string): boolean {
  return SCHEME.test(s);
}
