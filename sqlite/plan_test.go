package sqlite

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// queryPlan returns SQLite's plan for q, one line per step.
func queryPlan(t *testing.T, s *Store, q string) string {
	t.Helper()
	args := make([]any, strings.Count(q, "?"))
	for i := range args {
		args[i] = 1
	}
	rows, err := s.w.QueryContext(context.Background(), "EXPLAIN QUERY PLAN "+q, args...)
	if err != nil {
		t.Fatalf("explaining %s: %v", q, err)
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

// TestHotPathsUseIndexes guards the query plans the throughput depends on:
// a full scan of items on any of these paths would make its cost grow with
// the size of the database.
func TestHotPathsUseIndexes(t *testing.T) {
	t.Parallel()
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "plan.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, tc := range []struct {
		name, sql string
		want      []string
	}{
		{"claim", claimSQL, []string{"USING INTEGER PRIMARY KEY (rowid=?)", "USING COVERING INDEX items_claim (batch_key=? AND next_attempt_at<?)"}},
		{"items", itemListSQL, []string{"USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)"}},
		{"results", resultSQL(3), []string{"USING INDEX items_id (id=?)"}},
		{"failed items", itemListByRareStatus["failed"], []string{"USING INDEX items_rare_status (batch_key=? AND status=? AND seq>? AND seq<?)"}},
		{"rescue", rescueSQL, []string{"USING INDEX items_lease (lease_expires_at<?)"}},
		{"release", releaseSQL, []string{"USING INDEX items_id (id=?)"}},
		{"runnable", runnableSQL, []string{"USING INDEX batches_running"}},
		{"activate", activateSQL, []string{"USING INDEX batches_scheduled"}},
	} {
		plan := queryPlan(t, s, tc.sql)
		for _, w := range tc.want {
			if !strings.Contains(plan, w) {
				t.Errorf("%s: plan lacks %q:\n%s", tc.name, w, plan)
			}
		}
		if strings.Contains(plan, "SCAN items") {
			t.Errorf("%s: plan scans items:\n%s", tc.name, plan)
		}
	}
}
