package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	_ "modernc.org/sqlite" // database/sql driver "sqlite", for reading the source

	"github.com/batchsender/batchsender/postgres"
	"github.com/batchsender/batchsender/sqlite"
)

// migrateTables are the tables migrate-store always counts on both sides;
// any other table the import reports copying is counted too.
var migrateTables = []string{"projects", "api_keys", "connections", "batches", "items", "attempts"}

// countedTables returns migrateTables followed by the other tables of the
// report, sorted.
func countedTables(report postgres.ImportReport) []string {
	tables := slices.Clone(migrateTables)
	var more []string
	for t := range report {
		if !slices.Contains(tables, t) {
			more = append(more, t)
		}
	}
	slices.Sort(more)
	return append(tables, more...)
}

func newMigrateStoreCmd(getenv func(string) string) *cobra.Command {
	var from, to string
	cmd := &cobra.Command{
		Use:   "migrate-store --from PATH [--to postgres://...]",
		Short: "Copy a SQLite installation into an empty PostgreSQL database",
		Long: `Copy everything a SQLite installation holds (projects, API keys, connections
with their sealed secrets, batches, items, attempts; all IDs, statuses and
times) into an empty PostgreSQL database, in one transaction, then count the
rows on both sides and fail unless they agree.

--from is the SQLite file or the data directory holding batchsender.db. The
server using it must be stopped: migrate-store takes the data directory's
lock. --to is the PostgreSQL URL (default: ` + envDatabaseURL + `); it is
migrated first.

Afterwards start the PostgreSQL nodes with the same secrets key: the value of
` + envSecretKey + ` the SQLite server used, or else the content of its
<data-dir>/secret.key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if strings.TrimSpace(to) == "" {
				to = strings.TrimSpace(getenv(envDatabaseURL))
			}
			if to == "" {
				return errors.New("no target database: pass --to postgres://... or set " + envDatabaseURL)
			}
			logger, err := newLogger(cmd.ErrOrStderr(), envOr(getenv, envLogLevel, "warn"))
			if err != nil {
				return err
			}
			return migrateStore(cmd.Context(), from, to, logger, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "SQLite database file, or the data directory holding "+sqliteFile+" (required)")
	cmd.Flags().StringVar(&to, "to", "", "target PostgreSQL URL (default: env "+envDatabaseURL+")")
	_ = cmd.MarkFlagRequired("from")
	return cmd
}

// migrateStore copies the SQLite store at from into the PostgreSQL store at
// to and verifies the row counts of every table.
func migrateStore(ctx context.Context, from, to string, logger *slog.Logger, out io.Writer) error {
	path := from
	if fi, err := os.Stat(path); err != nil {
		return fmt.Errorf("reading --from: %w", err)
	} else if fi.IsDir() {
		path = filepath.Join(path, sqliteFile)
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("reading --from: %w", err)
		}
	}
	dir := filepath.Dir(path)
	// The data directory's lock keeps a running server out for the whole
	// copy, so the source is one consistent snapshot.
	release, err := lockDataDir(dir)
	if err != nil {
		return fmt.Errorf("%w: stop the server before migrate-store", err)
	}
	defer func() { _ = release() }()

	// Opening it through the store applies pending SQLite migrations, so
	// the file is at the schema version the import reads.
	lite, err := sqlite.Open(ctx, path, logger)
	if err != nil {
		return fmt.Errorf("opening SQLite store %s: %w", path, err)
	}
	if err := lite.Close(); err != nil {
		return fmt.Errorf("closing SQLite store: %w", err)
	}
	src, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		return fmt.Errorf("opening %s: %w", path, err)
	}
	defer src.Close()

	name, err := describeDatabaseURL(to)
	if err != nil {
		return err
	}
	pg, err := postgres.Open(ctx, to, logger)
	if err != nil {
		return fmt.Errorf("opening PostgreSQL store %s: %w", name, err)
	}
	defer pg.Close()

	report, err := pg.ImportSQLite(ctx, src)
	if err != nil {
		return fmt.Errorf("copying into %s: %s", name, describe(err))
	}

	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "TABLE\tSQLITE\tPOSTGRESQL\t")
	var mismatch []string
	for _, t := range countedTables(report) {
		var a, b int64
		if err := src.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+t).Scan(&a); err != nil {
			return fmt.Errorf("counting %s in SQLite: %w", t, err)
		}
		if err := pg.Pool().QueryRow(ctx, `SELECT count(*) FROM `+t).Scan(&b); err != nil {
			return fmt.Errorf("counting %s in PostgreSQL: %w", t, err)
		}
		if a != b || report[t] != a {
			mismatch = append(mismatch, fmt.Sprintf("%s: %d in SQLite, %d copied, %d in PostgreSQL", t, a, report[t], b))
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t\n", t, a, b)
	}
	if err := itemStatusesAgree(ctx, src, pg); err != nil {
		mismatch = append(mismatch, err.Error())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(mismatch) > 0 {
		return fmt.Errorf("the copy does not match its source: %s", strings.Join(mismatch, "; "))
	}
	_, err = fmt.Fprintf(out, "Copied %s into %s; row counts and item statuses verified.\n"+
		"Start every node with the secrets key the SQLite server used (%s, or the content of %s).\n",
		path, name, envSecretKey, filepath.Join(dir, "secret.key"))
	return err
}

// itemStatusesAgree compares the number of items per status on both sides.
func itemStatusesAgree(ctx context.Context, src *sql.DB, pg *postgres.Store) error {
	want := map[string]int64{}
	rows, err := src.QueryContext(ctx, `SELECT status, COUNT(*) FROM items GROUP BY status`)
	if err != nil {
		return fmt.Errorf("counting item statuses in SQLite: %w", err)
	}
	for rows.Next() {
		var s string
		var n int64
		if err := rows.Scan(&s, &n); err != nil {
			rows.Close()
			return fmt.Errorf("counting item statuses in SQLite: %w", err)
		}
		want[s] = n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("counting item statuses in SQLite: %w", err)
	}
	got := map[string]int64{}
	prow, err := pg.Pool().Query(ctx, `SELECT status::text, count(*) FROM items GROUP BY status`)
	if err != nil {
		return fmt.Errorf("counting item statuses in PostgreSQL: %w", err)
	}
	for prow.Next() {
		var s string
		var n int64
		if err := prow.Scan(&s, &n); err != nil {
			prow.Close()
			return fmt.Errorf("counting item statuses in PostgreSQL: %w", err)
		}
		got[s] = n
	}
	prow.Close()
	if err := prow.Err(); err != nil {
		return fmt.Errorf("counting item statuses in PostgreSQL: %w", err)
	}
	for s, n := range want {
		if got[s] != n {
			return fmt.Errorf("items %s: %d in SQLite, %d in PostgreSQL", s, n, got[s])
		}
	}
	for s, n := range got {
		if _, ok := want[s]; !ok {
			return fmt.Errorf("items %s: none in SQLite, %d in PostgreSQL", s, n)
		}
	}
	return nil
}
