// hints.js — what a user can do about an error code (PRODUCT.md §5), shared by the pages.
// `tesseraHint(code)` returns a sentence, or '' when the message says enough.
window.tesseraHint = function (code) {
  const hints = {
    token_missing: 'paste a token: `tessera token --room <room> --user <you>` prints one',
    token_malformed: 'the token is cut short or not a Tessera token: copy the whole line `tessera token` printed',
    token_bad_signature: 'the token was signed with another data dir’s secret: run `tessera token` with the server’s --data-dir (or in its directory)',
    token_expired: 'the token expired: mint a new one (`tessera token --ttl 6h …`)',
    token_not_yet_valid: 'the token starts in the future: check the clocks of this machine and the server',
    token_room_mismatch: 'the token is for another room: use its room, or mint one for this room',
    token_user_mismatch: 'the token is for another user: mint one for this user',
    app_unknown: 'the token names an app this server does not have',
    privilege_missing: 'the token does not allow this: publishing needs an anchor token (`tessera token --role anchor`)',
    role_not_allowed: 'audience tokens may only watch: mint an anchor token to publish',
    user_id_reserved: 'user ids starting with mix_, rec_ or relay_ belong to the server: pick another name',
    no_common_codec: 'this browser offered no codec the server takes (H.264, VP8, Opus): try Chromium or Firefox',
    limit_exceeded: 'a server limit is reached: close another session or raise the limit in the config',
    rate_limited: 'too many requests: wait a moment and try again',
    connect_failed: 'the server is not reachable: is it running, and did you open this page from it?',
    disconnected: 'the connection to the server dropped: join again',
    api_key_missing: 'paste an API key (admin.key in the data dir)',
    api_key_invalid: 'that API key is not valid: copy admin.key again, or create one (`tessera api-key create`)',
    action_denied: 'this API key’s policy does not allow it: use a full-access key',
  };
  return hints[code] || '';
};

// "<status> <code>: <message>" plus what to do, for a JSON error reply.
window.tesseraExplain = function (status, body) {
  const hint = window.tesseraHint(body && body.code);
  return `${status} ${body && body.code}: ${body && body.message}${hint ? ' — ' + hint : ''}`;
};
