package main

import (
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/auth"
	"github.com/batchsender/batchsender/sdk"
)

func newMigrateCmd(getenv func(string) string) *cobra.Command {
	var cfg storeConfig
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply pending database migrations and exit",
		Long:  "Apply pending database migrations and exit. serve applies them on start too; this is for deploys that migrate first.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := newLogger(cmd.ErrOrStderr(), envOr(getenv, envLogLevel, "info"))
			if err != nil {
				return err
			}
			st, err := openStore(cmd.Context(), cfg, logger, false)
			if err != nil {
				return err
			}
			if err := st.Close(); err != nil {
				return fmt.Errorf("closing store: %w", err)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "Migrations applied (%s)\n", st.Name)
			return err
		},
	}
	storeFlags(cmd, getenv, &cfg)
	return cmd
}

func newKeysCmd(getenv func(string) string) *cobra.Command {
	keys := &cobra.Command{
		Use:   "keys",
		Short: "Manage API keys (works on the data directory, next to a running server)",
	}
	var (
		cfg                 storeConfig
		project, name, role string
	)
	create := &cobra.Command{
		Use:   "create --project NAME [--name NAME] [--role admin|member]",
		Short: "Create an API key; the key is printed once, as the last word of the output",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := newLogger(cmd.ErrOrStderr(), envOr(getenv, envLogLevel, "warn"))
			if err != nil {
				return err
			}
			st, err := openStore(cmd.Context(), cfg, logger, false)
			if err != nil {
				return err
			}
			defer st.Close()
			plaintext, key, err := auth.CreateKey(cmd.Context(), st, project, name, role)
			if err != nil {
				return fmt.Errorf("creating key: %s", describe(err))
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "Created %s key %q (%s) for project %q. It is shown once: %s\n",
				key.Role, key.Name, key.ID, project, plaintext)
			return err
		},
	}
	create.Flags().StringVar(&project, "project", "", "project name; created if new (required)")
	create.Flags().StringVar(&name, "name", "key", "a name for the key, to tell keys apart")
	create.Flags().StringVar(&role, "role", batchsender.RoleAdmin, "admin or member")
	_ = create.MarkFlagRequired("project")
	storeFlags(create, getenv, &cfg)
	keys.AddCommand(create)
	return keys
}

func newModulesCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "modules",
		Short: "List the providers built into this binary",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PROVIDER\tMODULE\tTITLE\tMAX CHUNK\tDEFAULT RATE/S\tDEFAULT CONCURRENCY\tUNIT")
			for _, p := range sdk.Registered() {
				rate := "unlimited"
				if p.DefaultRate > 0 {
					rate = fmt.Sprintf("%g", p.DefaultRate)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%s\n", p.ID, p.Module(), p.Title, p.MaxChunk, rate, p.DefaultConcurrency, p.BillableUnit)
			}
			return tw.Flush()
		},
	}
}

// describe shows a domain error by its message alone ("project name must
// not be empty") and any other error in full.
func describe(err error) string {
	if e, ok := errors.AsType[*batchsender.Error](err); ok {
		return e.Message
	}
	return err.Error()
}
