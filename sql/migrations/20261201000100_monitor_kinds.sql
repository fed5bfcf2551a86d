-- Monitor kinds, assertions and the response facts a heartbeat keeps (issue #15).
--
-- api_monitors.kind says what a probe does; the target is always in `url`, in the form
-- `vantage check` takes:
--   http  http://host[:port]/path, https://...   (the columns of the seed schema)
--   tcp   tcp://host:port                         connect; optionally send, expect a banner
--   tls   tls://host:port                         handshake, certificate facts
--   dns   dns://name?type=A&server=ip[:port]      one query (type A by default, the
--                                                 system resolver unless server is given)
-- api_monitors.settings holds what only one kind has, as a JSON object:
--   http  {}            (everything is in the columns)
--   tcp   {"send": "PING\r\n", "expect": "+PONG"}                   both optional
--   tls   {"starttls": "smtp"}                                       optional
--   dns   {"answers": ["192.0.2.1"], "rcode": "NXDOMAIN"}            both optional:
--         every listed answer must be in the response; rcode defaults to NOERROR.
-- api_monitors.assertions is a JSON array of checks on the response, each an object
-- with a "type" (status, body, json, header, response_time, cert_expiry); see
-- src/assertions.rs and README. The older expected_status_codes and body_contains
-- columns keep working: a "status" assertion replaces expected_status_codes, and
-- body_contains is one more "body contains" check.
-- api_monitors.capture_headers names response headers stored with every heartbeat
-- (api_heartbeats.response_headers), e.g. '{cf-cache-status,x-served-by}'.

ALTER TABLE api_monitors
    ADD COLUMN kind            text NOT NULL DEFAULT 'http',
    ADD COLUMN settings        jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN assertions      jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN capture_headers text[] NOT NULL DEFAULT '{}';

-- The seed schema's check accepted only http(s) URLs; it now checks the URL against
-- the kind. Everything else it checked is unchanged.
CREATE OR REPLACE FUNCTION vantage_check_monitor_target(m api_monitors) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    settings_keys text[];
    allowed text[];
    assertion jsonb;
BEGIN
    IF m.kind IS NULL OR m.kind NOT IN ('http', 'tcp', 'tls', 'dns') THEN
        PERFORM vantage_reject('api_monitors.kind',
            format('must be one of http, tcp, tls, dns (got %s)', coalesce(quote_literal(m.kind), 'NULL')));
    END IF;
    IF m.kind = 'http' AND (m.url IS NULL OR m.url !~* '^https?://[^/?#[:space:]]+') THEN
        PERFORM vantage_reject('api_monitors.url',
            format('must use http:// or https:// for an http monitor (got "%s")', coalesce(m.url, 'NULL')),
            'write the full URL, such as https://example.com/health');
    ELSIF m.kind IN ('tcp', 'tls') AND (m.url IS NULL OR m.url !~* ('^' || m.kind || '://[^/?#[:space:]]+:[0-9]{1,5}/?$')) THEN
        PERFORM vantage_reject('api_monitors.url',
            format('must be %s://host:port for a %s monitor (got "%s")', m.kind, m.kind, coalesce(m.url, 'NULL')),
            format('write e.g. %s://mail.example.com:%s', m.kind, CASE m.kind WHEN 'tls' THEN '465' ELSE '25' END));
    ELSIF m.kind = 'dns' AND (m.url IS NULL OR m.url !~* '^dns://[^/?#[:space:]]+/?(\?[^[:space:]]*)?$') THEN
        PERFORM vantage_reject('api_monitors.url',
            format('must be dns://name[?type=A&server=ip] for a dns monitor (got "%s")', coalesce(m.url, 'NULL')),
            'write e.g. dns://example.com?type=MX or dns://example.com?type=A&server=192.0.2.53');
    END IF;

    IF jsonb_typeof(m.settings) IS DISTINCT FROM 'object' THEN
        PERFORM vantage_reject('api_monitors.settings',
            format('must be a JSON object (got %s)', coalesce(m.settings::text, 'NULL')));
    END IF;
    allowed := CASE m.kind
        WHEN 'tcp' THEN ARRAY['send', 'expect']
        WHEN 'tls' THEN ARRAY['starttls']
        WHEN 'dns' THEN ARRAY['answers', 'rcode']
        ELSE ARRAY[]::text[] END;
    SELECT array_agg(k ORDER BY k) INTO settings_keys
    FROM jsonb_object_keys(m.settings) k WHERE k <> ALL (allowed);
    IF settings_keys IS NOT NULL THEN
        PERFORM vantage_reject('api_monitors.settings',
            format('has %s, which a %s monitor does not take (it takes: %s)',
                   array_to_string(settings_keys, ', '), m.kind,
                   coalesce(nullif(array_to_string(allowed, ', '), ''), 'nothing; use the columns')));
    END IF;

    IF jsonb_typeof(m.assertions) IS DISTINCT FROM 'array' THEN
        PERFORM vantage_reject('api_monitors.assertions',
            format('must be a JSON array of objects (got %s)', coalesce(m.assertions::text, 'NULL')),
            'write e.g. [{"type": "json", "path": "$.status", "op": "==", "value": "ok"}]');
    END IF;
    FOR assertion IN SELECT value FROM jsonb_array_elements(m.assertions) LOOP
        IF jsonb_typeof(assertion) IS DISTINCT FROM 'object'
           OR assertion->>'type' IS NULL
           OR assertion->>'type' NOT IN ('status', 'body', 'json', 'header', 'response_time', 'cert_expiry') THEN
            PERFORM vantage_reject('api_monitors.assertions',
                format('%s is not an assertion: each needs a "type" of status, body, json, header, response_time or cert_expiry', assertion::text));
        END IF;
        IF m.kind <> 'http' AND assertion->>'type' IN ('status', 'body', 'json', 'header') THEN
            PERFORM vantage_reject('api_monitors.assertions',
                format('a %s assertion needs an http monitor; this one is %s', assertion->>'type', m.kind));
        END IF;
    END LOOP;

    IF m.capture_headers IS NULL
       OR EXISTS (SELECT 1 FROM unnest(m.capture_headers) h WHERE h !~ '^[A-Za-z0-9!#$%&''*+.^_`|~-]+$') THEN
        PERFORM vantage_reject('api_monitors.capture_headers',
            format('must be header names such as {cf-cache-status,server} (got %s)', coalesce(m.capture_headers::text, 'NULL')));
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(m.capture_headers) h
               WHERE lower(h) IN ('set-cookie', 'authorization', 'proxy-authenticate', 'www-authenticate', 'cookie')) THEN
        PERFORM vantage_reject('api_monitors.capture_headers',
            'must not name set-cookie, cookie or authentication headers: their values are credentials');
    END IF;
END
$$;

-- Same body as the seed schema's vantage_check_monitor, with the URL check delegated to
-- the kind-aware function above.
CREATE OR REPLACE FUNCTION vantage_check_monitor() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    part text;
    bounds text[];
BEGIN
    IF btrim(coalesce(NEW.name, '')) = '' THEN
        PERFORM vantage_reject('api_monitors.name', 'must not be empty');
    END IF;
    NEW.kind := lower(btrim(NEW.kind));
    NEW.method := upper(btrim(NEW.method));
    IF NEW.method IS NULL OR NEW.method NOT IN ('GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS') THEN
        PERFORM vantage_reject('api_monitors.method',
            format('must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS (got %s)',
                   coalesce(quote_ident(NEW.method), 'NULL')));
    END IF;
    PERFORM vantage_check_monitor_target(NEW);
    IF NEW.expected_status_codes IS NULL
       OR NEW.expected_status_codes !~ '^\s*[1-5]([0-9]{2}|xx)(\s*-\s*[1-5][0-9]{2})?(\s*,\s*[1-5]([0-9]{2}|xx)(\s*-\s*[1-5][0-9]{2})?)*\s*$' THEN
        PERFORM vantage_reject('api_monitors.expected_status_codes',
            format('must be a comma-separated list of status codes (100-599), ranges or classes such as ''200-399'', ''200,204'' or ''2xx,301'' (got %s)',
                   coalesce(quote_literal(NEW.expected_status_codes), 'NULL')));
    END IF;
    FOREACH part IN ARRAY regexp_split_to_array(btrim(NEW.expected_status_codes), '\s*,\s*') LOOP
        bounds := regexp_split_to_array(part, '\s*-\s*');
        IF array_length(bounds, 1) = 2 THEN
            IF bounds[1] ~ 'xx' THEN
                PERFORM vantage_reject('api_monitors.expected_status_codes',
                    format('has a range starting with a class; write ''200-299'' or ''2xx'' (got %s)', quote_literal(part)));
            ELSIF bounds[1]::int > bounds[2]::int THEN
                PERFORM vantage_reject('api_monitors.expected_status_codes',
                    format('has a range whose start is above its end (got %s)', quote_literal(part)));
            END IF;
        END IF;
    END LOOP;
    IF NEW.ip_family IS NULL OR NEW.ip_family NOT IN ('any', 'ipv4', 'ipv6') THEN
        PERFORM vantage_reject('api_monitors.ip_family',
            format('must be ''any'', ''ipv4'' or ''ipv6'' (got %s)', coalesce(quote_literal(NEW.ip_family), 'NULL')));
    END IF;
    IF NEW.max_redirects IS NULL OR NEW.max_redirects < 0 OR NEW.max_redirects > 50 THEN
        PERFORM vantage_reject('api_monitors.max_redirects',
            format('must be between 0 and 50 (got %s)', coalesce(NEW.max_redirects::text, 'NULL')));
    END IF;
    IF jsonb_typeof(NEW.headers) IS DISTINCT FROM 'object'
       OR EXISTS (SELECT 1 FROM jsonb_each(NEW.headers) h WHERE jsonb_typeof(h.value) <> 'string') THEN
        PERFORM vantage_reject('api_monitors.headers',
            format('must be a JSON object of strings such as {"Accept": "application/json"} (got %s)',
                   coalesce(NEW.headers::text, 'NULL')));
    END IF;
    RETURN NEW;
END
$$;

-- Response facts. Like every phase column, NULL when the kind or the probe did not
-- get that far.
--   content_type      the final response's Content-Type (http)
--   server            the final response's Server header (http)
--   response_headers  {"cf-cache-status": "HIT"}: the monitor's capture_headers that
--                     the final response had (http), each value capped at 256 bytes
--   details           what only one kind measures, a JSON object:
--                       dns  {"rcode": "NOERROR", "answers": ["192.0.2.1", ...]}
--                       tcp  {"banner": "220 mail.example.com ESMTP"} (first 256 bytes)
--                       tls  {"subject": "CN=...", "issuer": "CN=...", "dns_names": [...]}
ALTER TABLE api_heartbeats
    ADD COLUMN content_type     text,
    ADD COLUMN server           text,
    ADD COLUMN response_headers jsonb,
    ADD COLUMN details          jsonb;

-- A check of the response that the monitor's assertions asked for failed; the message
-- names the assertion and what was seen.
ALTER TABLE api_heartbeats DROP CONSTRAINT api_heartbeats_error_kind_check;
ALTER TABLE api_heartbeats ADD CONSTRAINT api_heartbeats_error_kind_check CHECK (error_kind IN (
    'dns_nxdomain', 'dns_timeout', 'dns_error',
    'connect_refused', 'connect_timeout', 'connect_error',
    'tls_handshake', 'tls_certificate', 'timeout', 'http_protocol',
    'status_mismatch', 'body_mismatch', 'body_too_large',
    'redirect_loop', 'too_many_redirects', 'redirect_blocked', 'invalid_request',
    'assertion_failed'));

-- The reader sees api_monitors column by column (secrets excluded, see the roles
-- migration); the new columns hold no secrets.
GRANT SELECT (kind, settings, assertions, capture_headers) ON api_monitors TO vantage_reader;

-- Everything Vantage creates belongs to vantage_owner (the roles migration).
ALTER FUNCTION vantage_check_monitor_target(api_monitors) OWNER TO vantage_owner;
