\pset format unaligned
-- Missing configuration names the setting to set
SET m3ter.org_id = '';
SELECT err($$SELECT m3ter_submit('{"meter":"m","account":"a","ts":"2024-01-02T03:04:05Z"}')$$);
SELECT err($$SELECT m3ter_organization_config()$$);
SELECT err($$SELECT m3ter_flush()$$);
RESET m3ter.org_id;
SET m3ter.api_secret = '';
SELECT err($$SELECT m3ter_organization_config()$$);
RESET m3ter.api_secret;
SET m3ter.api_url = '';
SELECT err($$SELECT m3ter_organization_config()$$);
RESET m3ter.api_url;
-- an unknown m3ter.* setting is refused (the prefix is reserved)
SELECT err($$SET m3ter.no_such_setting = 1$$);
-- TLS verification is on unless a superuser turns it off
SHOW m3ter.tls_verify;
SELECT err($$SET m3ter.request_timeout = 0$$);
-- m3ter.org_id is checked as a UUID when set
SELECT err($$SET m3ter.org_id = 'not-a-uuid'$$);
SELECT err($$SET m3ter.org_id = '5f3b8c2e-1d4a-4e6b-9c7d-0a1b2c3d4e5'$$);
SELECT err($$SET m3ter.org_id = '5f3b8c2e-1d4a-4e6b-9c7d-0a1b2c3d4e5ff'$$);
SET m3ter.org_id = '5F3B8C2E-1D4A-4E6B-9C7D-0A1B2C3D4E5F';
RESET m3ter.org_id;
