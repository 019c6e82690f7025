package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/client"
)

// clientFlags are the server URL and key of the client commands.
type clientFlags struct {
	url    string
	apiKey string
	output string
}

// addClientFlags registers --url, --api-key and --output on a command
// group, defaulting from the environment.
func addClientFlags(cmd *cobra.Command, getenv func(string) string, cf *clientFlags) {
	cmd.PersistentFlags().StringVar(&cf.url, "url", envOr(getenv, envURL, defaultURL), "server base URL (env "+envURL+")")
	// The key's default is read lazily so that help output never shows it.
	cmd.PersistentFlags().StringVar(&cf.apiKey, "api-key", "", "API key (env "+envAPIKey+")")
	cmd.PersistentFlags().StringVarP(&cf.output, "output", "o", "json", "output format: json or table")
	cmd.PersistentPreRunE = func(*cobra.Command, []string) error {
		if cf.apiKey == "" {
			cf.apiKey = strings.TrimSpace(getenv(envAPIKey))
		}
		if cf.apiKey == "" {
			return errors.New("no API key: pass --api-key or set " + envAPIKey)
		}
		if cf.output != "json" && cf.output != "table" {
			return fmt.Errorf("--output %q: use json or table", cf.output)
		}
		return nil
	}
}

func (cf *clientFlags) client() *client.Client {
	return client.New(cf.url, cf.apiKey, client.WithUserAgent("batchsender-cli/"+version))
}

// jsonArg reads a JSON object given inline or as @file. Empty gives nil.
func jsonArg(flag, v string) (json.RawMessage, error) {
	if v == "" {
		return nil, nil
	}
	b := []byte(v)
	if name, ok := strings.CutPrefix(v, "@"); ok {
		var err error
		if b, err = os.ReadFile(name); err != nil {
			return nil, fmt.Errorf("--%s: %w", flag, err)
		}
	}
	b = bytes.TrimSpace(b)
	if !json.Valid(b) || len(b) == 0 || b[0] != '{' {
		return nil, fmt.Errorf("--%s must be a JSON object (or @file holding one)", flag)
	}
	return b, nil
}

// printJSON writes v indented, with a final newline.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newConnectionCmd(getenv func(string) string) *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:     "connection",
		Aliases: []string{"connections", "conn"},
		Short:   "Manage provider connections on a running server",
	}
	addClientFlags(cmd, getenv, &cf)

	var provider, name, config, secrets string
	create := &cobra.Command{
		Use:   "create --provider ID --name NAME [--config JSON|@file] [--secrets JSON|@file]",
		Short: "Create a connection (secrets are stored encrypted and never shown again)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfgJSON, err := jsonArg("config", config)
			if err != nil {
				return err
			}
			secJSON, err := jsonArg("secrets", secrets)
			if err != nil {
				return err
			}
			req := client.ConnectionCreateRequest{Provider: provider, Name: name}
			if cfgJSON != nil {
				req.Config = cfgJSON
			}
			if secJSON != nil {
				req.Secrets = secJSON
			}
			conn, err := cf.client().ConnectionCreate(cmd.Context(), req)
			if err != nil {
				return err
			}
			return printConnections(cmd.OutOrStdout(), cf.output, conn)
		},
	}
	create.Flags().StringVar(&provider, "provider", "", "provider ID, e.g. webhook.http (see: batchsender modules)")
	create.Flags().StringVar(&name, "name", "", "connection name, unique in the project")
	create.Flags().StringVar(&config, "config", "", "provider config as a JSON object, or @file")
	create.Flags().StringVar(&secrets, "secrets", "", "provider secrets as a JSON object, or @file")
	_ = create.MarkFlagRequired("provider")
	_ = create.MarkFlagRequired("name")

	get := &cobra.Command{
		Use:   "get ID|NAME",
		Short: "Show a connection",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := cf.client().ConnectionGet(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printConnections(cmd.OutOrStdout(), cf.output, conn)
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the project's connections",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conns, err := cf.client().ConnectionList(cmd.Context())
			if err != nil {
				return err
			}
			if cf.output == "json" {
				if conns == nil {
					conns = []batchsender.Connection{}
				}
				return printJSON(cmd.OutOrStdout(), conns)
			}
			return printConnections(cmd.OutOrStdout(), cf.output, conns...)
		},
	}
	cmd.AddCommand(create, get, list)
	return cmd
}

func printConnections(w io.Writer, output string, conns ...batchsender.Connection) error {
	if output == "json" && len(conns) == 1 {
		return printJSON(w, conns[0])
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tPROVIDER\tSECRETS\tCREATED")
	for _, c := range conns {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.ID, c.Name, c.Provider, strings.Join(c.SecretNames, ","), c.CreatedAt.Format(time.RFC3339))
	}
	return tw.Flush()
}

func newBatchCmd(getenv func(string) string) *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:     "batch",
		Aliases: []string{"batches"},
		Short:   "Create, follow and manage batches on a running server",
	}
	addClientFlags(cmd, getenv, &cf)
	cmd.AddCommand(
		newBatchCreateCmd(&cf),
		newBatchGetCmd(&cf),
		newBatchListCmd(&cf),
		newBatchWatchCmd(&cf),
		newBatchItemsCmd(&cf),
		newBatchActionCmd(&cf, "pause", "Pause a batch; items in flight finish", (*client.Client).BatchPause),
		newBatchActionCmd(&cf, "resume", "Resume a paused batch", (*client.Client).BatchResume),
		newBatchActionCmd(&cf, "cancel", "Cancel a batch; pending items are not sent", (*client.Client).BatchCancel),
		newBatchActionCmd(&cf, "retry-failed", "Send a batch's failed and unknown items again", (*client.Client).BatchRetryFailed),
	)
	return cmd
}

func newBatchCreateCmd(cf *clientFlags) *cobra.Command {
	var connection, module, template, options, file, format, idemKey string
	var noWait bool
	cmd := &cobra.Command{
		Use:   "create --connection C --file items.csv|items.ndjson [--module M] [--template JSON|@file] [--options JSON|@file] [--no-wait]",
		Short: "Create a batch from a CSV or NDJSON file, start it and follow its progress",
		Long: `Create a batch from a CSV or NDJSON file, start it and follow its progress.

The file is streamed to the server as a draft's items (its format is chosen by
the extension: .csv, or .ndjson/.jsonl, or by --format; "--file -" reads standard
input and needs --format), then the batch is started. Unless
--no-wait is given, a live progress bar runs on stderr until the batch is done,
and the final batch is printed on stdout.

CSV: the header names the item fields; dotted names nest (payload.name), empty
cells are left out so the template's defaults apply, and all values are strings.
Use NDJSON (one JSON object per line) for typed values.

Exit status: 0 when every item succeeded (or was skipped); 2 when the batch
ended with failed or unknown items, or was cancelled; 1 on any other error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			stderr := cmd.ErrOrStderr()
			tmpl, err := jsonArg("template", template)
			if err != nil {
				return err
			}
			optsJSON, err := jsonArg("options", options)
			if err != nil {
				return err
			}
			contentType, err := uploadContentType(file, format)
			if err != nil {
				return err
			}
			if file != "-" {
				if _, err := os.Stat(file); err != nil {
					return fmt.Errorf("--file: %w", err)
				}
			}
			c := cf.client()
			defer c.Close()
			if module == "" {
				conn, err := c.ConnectionGet(ctx, connection)
				if err != nil {
					return fmt.Errorf("looking up connection %q: %w", connection, err)
				}
				module = conn.Module()
			}
			req := client.BatchCreateRequest{Module: module, Connection: connection, IdempotencyKey: idemKey}
			if tmpl != nil {
				req.Template = tmpl
			}
			if optsJSON != nil {
				var o batchsender.BatchOptions
				dec := json.NewDecoder(bytes.NewReader(optsJSON))
				dec.DisallowUnknownFields()
				if err := dec.Decode(&o); err != nil {
					return fmt.Errorf("--options: %w", err)
				}
				req.Options = &o
			}
			b, err := c.BatchCreate(ctx, req)
			if err != nil {
				return fmt.Errorf("creating batch: %w", err)
			}
			fmt.Fprintf(stderr, "Created batch %s (draft); uploading %s ...\n", b.ID, file)
			start := time.Now()
			draftID := b.ID
			if b, err = upload(ctx, c, draftID, file, contentType, cmd.InOrStdin()); err != nil {
				// Nothing of a rejected upload is kept; cancel the empty draft
				// too, so a failed command leaves nothing behind.
				if _, cerr := c.BatchCancel(context.WithoutCancel(ctx), draftID); cerr == nil {
					fmt.Fprintf(stderr, "Upload rejected; cancelled draft batch %s.\n", draftID)
				}
				return fmt.Errorf("uploading %s: %w", file, err)
			}
			fmt.Fprintf(stderr, "Uploaded %d items in %s.\n", b.Total, time.Since(start).Round(time.Millisecond))
			if b, err = c.BatchStart(ctx, b.ID); err != nil {
				return fmt.Errorf("starting batch %s: %w", b.ID, err)
			}
			fmt.Fprintf(stderr, "Started batch %s: %s.\n", b.ID, b.Status)
			if noWait {
				return printBatches(cmd.OutOrStdout(), cf.output, b)
			}
			return watchAndReport(cmd, c, cf, b)
		},
	}
	cmd.Flags().StringVar(&connection, "connection", "", "connection ID or name (required)")
	cmd.Flags().StringVar(&module, "module", "", "module, e.g. webhook (default: the connection's)")
	cmd.Flags().StringVar(&template, "template", "", "batch template (defaults of item fields) as a JSON object, or @file")
	cmd.Flags().StringVar(&options, "options", "", `batch options as a JSON object, or @file, e.g. '{"rate_per_second":100,"max_attempts":5}'`)
	cmd.Flags().StringVarP(&file, "file", "f", "", "items file: .csv, .ndjson or .jsonl, or - for standard input (required)")
	cmd.Flags().StringVar(&format, "format", "", "csv or ndjson (default: by the file's extension)")
	cmd.Flags().StringVar(&idemKey, "idempotency-key", "", "Idempotency-Key for the batch creation")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the batch is started instead of following it")
	_ = cmd.MarkFlagRequired("connection")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

func newBatchWatchCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "watch ID",
		Short: "Follow a batch's progress until it is done (exit status as for create)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := cf.client()
			defer c.Close()
			b, err := c.BatchGet(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return watchAndReport(cmd, c, cf, b)
		},
	}
}

// watchAndReport follows the batch to its end with a progress bar on
// stderr, prints the final batch on stdout and turns failed items into exit
// status 2.
func watchAndReport(cmd *cobra.Command, c *client.Client, cf *clientFlags, b batchsender.Batch) error {
	stderr := cmd.ErrOrStderr()
	final, err := watch(cmd.Context(), c, b, newProgress(stderr))
	if err != nil {
		if cmd.Context().Err() != nil {
			return fmt.Errorf("stopped following batch %s; it goes on on the server (batchsender batch watch %s)", b.ID, b.ID)
		}
		return err
	}
	if err := printBatches(cmd.OutOrStdout(), cf.output, final); err != nil {
		return err
	}
	bad := final.Counts.Failed + final.Counts.Unknown
	switch {
	case final.Status == batchsender.BatchCancelled:
		return &exitError{code: 2, msg: fmt.Sprintf("batch %s was cancelled", final.ID)}
	case bad > 0:
		return &exitError{code: 2, msg: fmt.Sprintf("batch %s completed with %d failed or unknown item(s); list them with: batchsender batch items %s --status failed", final.ID, bad, final.ID)}
	}
	return nil
}

func newBatchGetCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show a batch with its counts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := cf.client().BatchGet(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printBatches(cmd.OutOrStdout(), cf.output, b)
		},
	}
}

func newBatchListCmd(cf *clientFlags) *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the project's batches, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := cf.client()
			batches := []batchsender.Batch{}
			p := client.ListParams{Limit: min(limit, 100)}
			for len(batches) < limit {
				page, err := c.BatchList(cmd.Context(), p)
				if err != nil {
					return err
				}
				batches = append(batches, page.Data...)
				if page.NextCursor == "" || len(page.Data) == 0 {
					break
				}
				p.Cursor = page.NextCursor
			}
			if len(batches) > limit {
				batches = batches[:limit]
			}
			if cf.output == "json" {
				return printJSON(cmd.OutOrStdout(), batches)
			}
			return printBatches(cmd.OutOrStdout(), cf.output, batches...)
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 20, "how many batches to show at most")
	return cmd
}

func newBatchActionCmd(cf *clientFlags, name, short string, do func(*client.Client, context.Context, string) (batchsender.Batch, error)) *cobra.Command {
	return &cobra.Command{
		Use:   name + " ID",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := do(cf.client(), cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printBatches(cmd.OutOrStdout(), cf.output, b)
		},
	}
}

func printBatches(w io.Writer, output string, batches ...batchsender.Batch) error {
	if output == "json" && len(batches) == 1 {
		return printJSON(w, batches[0])
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tMODULE\tTOTAL\tPENDING\tIN FLIGHT\tSUCCEEDED\tFAILED\tCANCELLED\tUNKNOWN\tCREATED")
	for _, b := range batches {
		c := b.Counts
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", b.ID, b.Status, b.Module, b.Total,
			c.Pending, c.InFlight, c.Succeeded, c.Failed, c.Cancelled, c.Unknown, b.CreatedAt.Format(time.RFC3339))
	}
	return tw.Flush()
}

func newBatchItemsCmd(cf *clientFlags) *cobra.Command {
	var status, format string
	cmd := &cobra.Command{
		Use:   "items ID [--status failed] [--format ndjson|csv]",
		Short: "Print a batch's items (all pages), e.g. the failed ones, as NDJSON or CSV",
		Long: `Print a batch's items, following every page, as NDJSON (one item object per
line) or CSV (columns seq, id, status, attempts, last_error,
provider_message_id, data; data is the item's JSON).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var st batchsender.ItemStatus
			if status != "" {
				var err error
				if st, err = batchsender.ParseItemStatus(status); err != nil {
					return fmt.Errorf("--status: %s", describe(err))
				}
			}
			items := cf.client().BatchItemsAll(cmd.Context(), args[0], st)
			switch format {
			case "ndjson", "jsonl":
				return writeItemsNDJSON(cmd.OutOrStdout(), items)
			case "csv":
				return writeItemsCSV(cmd.OutOrStdout(), items)
			}
			return fmt.Errorf("--format %q: use ndjson or csv", format)
		},
	}
	cmd.Flags().StringVar(&status, "status", "", "only items of this status: pending, in_flight, succeeded, failed, cancelled, skipped, unknown")
	cmd.Flags().StringVar(&format, "format", "ndjson", "ndjson or csv")
	return cmd
}

func writeItemsNDJSON(w io.Writer, items func(func(batchsender.Item, error) bool)) error {
	enc := json.NewEncoder(w)
	for it, err := range items {
		if err != nil {
			return err
		}
		if err := enc.Encode(it); err != nil {
			return err
		}
	}
	return nil
}

func writeItemsCSV(w io.Writer, items func(func(batchsender.Item, error) bool)) error {
	cw := csv.NewWriter(w)
	if err := cw.Write([]string{"seq", "id", "status", "attempts", "last_error", "provider_message_id", "data"}); err != nil {
		return err
	}
	for it, err := range items {
		if err != nil {
			cw.Flush()
			return err
		}
		rec := []string{strconv.FormatInt(it.Seq, 10), it.ID, string(it.Status), strconv.Itoa(it.Attempts), it.LastError, it.ProviderMessageID, string(it.Data)}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// uploadContentType picks the upload's content type from --format, or else
// from the file's extension.
func uploadContentType(file, format string) (string, error) {
	switch format {
	case "csv":
		return client.ContentTypeCSV, nil
	case "ndjson", "jsonl":
		return client.ContentTypeNDJSON, nil
	case "":
		if file == "-" {
			return "", errors.New("--file - (standard input) needs --format csv or --format ndjson")
		}
		return client.ContentTypeFor(file)
	}
	return "", fmt.Errorf("--format %q: use csv or ndjson", format)
}

// upload streams the items file (or stdin for "-") into the draft.
func upload(ctx context.Context, c *client.Client, id, file, contentType string, stdin io.Reader) (batchsender.Batch, error) {
	if file == "-" {
		return c.BatchUploadItems(ctx, id, contentType, stdin)
	}
	if byExt, err := client.ContentTypeFor(file); err == nil && byExt == contentType {
		return c.BatchUploadFile(ctx, id, file) // sends the size up front
	}
	f, err := os.Open(file)
	if err != nil {
		return batchsender.Batch{}, fmt.Errorf("opening items file: %w", err)
	}
	defer f.Close()
	return c.BatchUploadItems(ctx, id, contentType, f)
}
