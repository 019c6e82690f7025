package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/batchsender/batchsender"
	"github.com/batchsender/batchsender/sdk"
)

// provisionTimeout bounds how long a provider may take to check a new
// connection's config and secrets.
const provisionTimeout = 15 * time.Second

// connectionNameRE is what a connection name may look like: short, no
// spaces, so it reads well in URLs and CLI flags.
var connectionNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// connectionCreateRequest is the body of POST /v1/connections.
type connectionCreateRequest struct {
	Provider string          `json:"provider"`
	Name     string          `json:"name"`
	Config   json.RawMessage `json:"config"`
	Secrets  json.RawMessage `json:"secrets"`
}

// Validate checks the request's shape; the provider checks the contents.
func (c *connectionCreateRequest) Validate() error {
	switch {
	case c.Provider == "":
		return batchsender.Errorf(batchsender.EINVALID, "provider is required (for example \"webhook.http\"; GET /v1/modules lists them)")
	case c.Name == "":
		return batchsender.Errorf(batchsender.EINVALID, "name is required")
	case !connectionNameRE.MatchString(c.Name):
		return batchsender.Errorf(batchsender.EINVALID, "name %q must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", c.Name)
	}
	if _, ok := sdk.Lookup(c.Provider); !ok {
		return batchsender.Errorf(batchsender.EINVALID, "unknown provider %q; registered providers: %s", c.Provider, strings.Join(providerIDs(), ", "))
	}
	if isNull(c.Config) {
		c.Config = json.RawMessage("{}")
	} else if !isJSONObject(c.Config) {
		return batchsender.Errorf(batchsender.EINVALID, "config must be a JSON object")
	}
	if isNull(c.Secrets) {
		c.Secrets = json.RawMessage("{}")
	} else if !isJSONObject(c.Secrets) {
		return batchsender.Errorf(batchsender.EINVALID, "secrets must be a JSON object")
	}
	return nil
}

// secretNames returns the sorted names of the secrets, the only part of
// them the API ever shows.
func (c *connectionCreateRequest) secretNames() ([]string, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(c.Secrets, &m); err != nil {
		return nil, batchsender.Errorf(batchsender.EINVALID, "secrets must be a JSON object")
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names)
	return names, nil
}

// connectionResponse is a connection as the API shows it: never its
// secrets, only their names.
type connectionResponse struct {
	ID          string          `json:"id"`
	ProjectID   string          `json:"project_id"`
	Provider    string          `json:"provider"`
	Module      string          `json:"module"`
	Name        string          `json:"name"`
	Config      json.RawMessage `json:"config"`
	SecretNames []string        `json:"secret_names"`
	CreatedAt   time.Time       `json:"created_at"`
	UpdatedAt   time.Time       `json:"updated_at"`
}

func toConnectionResponse(c batchsender.Connection) connectionResponse {
	r := connectionResponse{
		ID: c.ID, ProjectID: c.ProjectID, Provider: c.Provider, Module: c.Module(), Name: c.Name,
		Config: c.Config, SecretNames: c.SecretNames, CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt,
	}
	if r.SecretNames == nil {
		r.SecretNames = []string{}
	}
	if len(bytes.TrimSpace(r.Config)) == 0 {
		r.Config = json.RawMessage("{}")
	}
	return r
}

func (s *server) handleConnectionCreate() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, err := decode[connectionCreateRequest](w, r, s.MaxBodyBytes)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		names, err := req.secretNames()
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		// Provision once to check config and secrets before anything is
		// stored: a connection that cannot work is refused at once.
		ctx, cancel := context.WithTimeout(r.Context(), provisionTimeout)
		p, err := s.Providers.Provision(ctx, req.Provider, req.Config, req.Secrets)
		cancel()
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		_ = p.Close()
		var sealed []byte
		if len(names) > 0 {
			if sealed, err = s.Sealer.Seal(req.Secrets); err != nil {
				s.writeError(w, r, fmt.Errorf("sealing connection secrets: %w", err))
				return
			}
		}
		conn, err := s.Store.ConnectionCreate(r.Context(), batchsender.ConnectionCreateParams{
			ProjectID:     projectID(r),
			Provider:      req.Provider,
			Name:          req.Name,
			Config:        compact(req.Config),
			SecretsSealed: sealed,
			SecretNames:   names,
		})
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		w.Header().Set("Location", "/v1/connections/"+conn.ID)
		s.encode(w, r, http.StatusCreated, toConnectionResponse(conn))
	})
}

func (s *server) handleConnectionList() http.Handler {
	type response struct {
		Data []connectionResponse `json:"data"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conns, err := s.Store.ConnectionList(r.Context(), projectID(r))
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		out := response{Data: make([]connectionResponse, 0, len(conns))}
		for _, c := range conns {
			out.Data = append(out.Data, toConnectionResponse(c))
		}
		s.encode(w, r, http.StatusOK, out)
	})
}

func (s *server) handleConnectionGet() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := s.Store.ConnectionGet(r.Context(), projectID(r), r.PathValue("id"))
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		s.encode(w, r, http.StatusOK, toConnectionResponse(conn))
	})
}

// moduleResponse is one registered provider as GET /v1/modules shows it.
type moduleResponse struct {
	Module string `json:"module"`
	sdk.Info
}

func (s *server) handleModuleList() http.Handler {
	type response struct {
		Data []moduleResponse `json:"data"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		infos := sdk.Registered()
		out := response{Data: make([]moduleResponse, 0, len(infos))}
		for _, info := range infos {
			out.Data = append(out.Data, moduleResponse{Module: info.Module(), Info: info})
		}
		s.encode(w, r, http.StatusOK, out)
	})
}

// providerIDs lists the registered providers, for error messages.
func providerIDs() []string {
	var ids []string
	for _, info := range sdk.Registered() {
		ids = append(ids, info.ID)
	}
	return ids
}

// moduleNames lists the modules that have at least one provider.
func moduleNames() []string {
	var mods []string
	for _, info := range sdk.Registered() {
		if !slices.Contains(mods, info.Module()) {
			mods = append(mods, info.Module())
		}
	}
	return mods
}

func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || bytes.Equal(raw, []byte("null"))
}

// compact returns raw without insignificant whitespace (raw is valid JSON).
func compact(raw json.RawMessage) json.RawMessage {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return raw
	}
	return buf.Bytes()
}
