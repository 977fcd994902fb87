#!/usr/bin/env bash
# The main job end to end on an embedded default: installs what is missing,
# builds the extension, starts a throwaway cluster and the local m3ter
# stand-in, sets the credentials, creates a meter, submits measurements,
# inserts usage into the outbox and watches the worker deliver it.  Cleans up.
source "$(dirname "$0")/lib.sh"
# only M3TER_PACKAGES (lib.sh): no pg_cron, no test tools, no service
m3ter_start "" m3ter

show() { printf '\n-- %s\n' "$1"; q -c "$2"; }

q -c "CREATE EXTENSION m3ter"
show "settings (the secret is set in postgresql.conf, readable by superusers only)" \
     "SELECT name, setting FROM pg_settings WHERE name IN ('m3ter.org_id','m3ter.api_url','m3ter.ingest_url') ORDER BY 1"
show "create a meter through the Config API" \
     "SELECT m3ter_create_meter('API requests', 'api_requests',
        '[{\"category\":\"MEASURE\",\"code\":\"requests\",\"name\":\"Requests\",\"unit\":\"requests\"},
          {\"category\":\"WHERE\",\"code\":\"region\",\"name\":\"Region\"}]') ->> 'id' AS meter_id"
show "submit two measurements synchronously" \
     "SELECT m3ter_submit('[{\"meter\":\"api_requests\",\"account\":\"acme\",\"ts\":\"2024-01-02T03:04:05Z\",\"measure\":{\"requests\":218},\"where\":{\"region\":\"eu-west-1\"}},
                            {\"meter\":\"api_requests\",\"account\":\"globex\",\"ts\":\"2024-01-02T03:04:05Z\",\"measure\":{\"requests\":-3}}]')"
show "insert 5,000 usage rows into the outbox" \
     "INSERT INTO m3ter.outbox (meter, account, measure, \"where\")
      SELECT 'api_requests', 'acct-' || (i % 50), jsonb_build_object('requests', i % 100 + 1), '{\"region\": \"eu-west-1\"}'
        FROM generate_series(1, 5000) i"
for _ in $(seq 100); do
    [ "$(q -At -c "SELECT count(*) FROM m3ter.outbox WHERE status = 'pending'")" = 0 ] && break
    sleep 0.1
done
show "the background worker delivered them" "SELECT status, count(*), max(accepted_at - created_at) AS slowest FROM m3ter.outbox GROUP BY status"
show "outbox statistics" "SELECT * FROM m3ter.outbox_stats"
printf '\n-- what the m3ter stand-in accepted\n'
standin GET /_control/summary
echo
accepted=$(standin GET /_control/summary | python3 -c 'import json,sys; print(json.load(sys.stdin)["accepted"])')
if [ "$accepted" = 5002 ]; then
    echo "demo: 5002 measurements accepted by the stand-in (2 submitted, 5000 from the outbox)"
else
    echo "demo: expected 5002 accepted measurements, the stand-in has $accepted" >&2
    exit 1
fi
