package httpapi

import (
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/batchsender/batchsender"
)

// Stored template limits.
const (
	defaultTemplatePage = 50
	maxTemplatePage     = 500
)

// templateNameRE is what a stored template's name looks like: like a
// connection name, so it reads well in URLs.
var templateNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// templateCreateRequest is the body of POST /v1/templates.
type templateCreateRequest struct {
	Name     string          `json:"name"`
	Module   string          `json:"module"`
	Template json.RawMessage `json:"template"`
}

// Validate checks the request; email templates are compiled too, so a
// template that cannot render is refused when stored, not when used.
func (t *templateCreateRequest) Validate() error {
	switch {
	case t.Name == "":
		return batchsender.Errorf(batchsender.EINVALID, "name is required")
	case !templateNameRE.MatchString(t.Name):
		return batchsender.Errorf(batchsender.EINVALID, "name %q must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", t.Name)
	case t.Module == "":
		return batchsender.Errorf(batchsender.EINVALID, "module is required (for example \"email\")")
	case !slices.Contains(moduleNames(), t.Module) && modulePreviewers[t.Module] == nil:
		return batchsender.Errorf(batchsender.EINVALID, "unknown module %q; modules: %s", t.Module, strings.Join(moduleNames(), ", "))
	case !isJSONObject(t.Template):
		return batchsender.Errorf(batchsender.EINVALID, "template is required: a JSON object, the template a batch of module %s takes", t.Module)
	}
	if compile := modulePreviewers[t.Module]; compile != nil {
		if _, err := compile(t.Template); err != nil {
			return batchsender.Errorf(batchsender.EINVALID, "%v", err)
		}
	}
	return nil
}

// templateRef names a stored template in a batch: the latest version
// unless one is given.
type templateRef struct {
	Name    string `json:"name"`
	Version int    `json:"version,omitempty"`
}

// resolveTemplate returns a stored template version for a batch of module.
func (s *server) resolveTemplate(r *http.Request, ref *templateRef, module string) (json.RawMessage, error) {
	if ref.Name == "" {
		return nil, batchsender.Errorf(batchsender.EINVALID, "template_ref.name is required")
	}
	if ref.Version < 0 {
		return nil, batchsender.Errorf(batchsender.EINVALID, "template_ref.version must be positive")
	}
	t, err := s.Store.TemplateGet(r.Context(), projectID(r), ref.Name, ref.Version)
	if batchsender.IsNotFound(err) {
		return nil, batchsender.Errorf(batchsender.EINVALID, "template_ref: %s", batchsender.ErrorMessage(err))
	}
	if err != nil {
		return nil, err
	}
	if t.Module != module {
		return nil, batchsender.Errorf(batchsender.EINVALID, "template_ref: template %q is a template of module %q, not %q", ref.Name, t.Module, module)
	}
	return t.Template, nil
}

func (s *server) handleTemplateCreate() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, err := decode[templateCreateRequest](w, r, s.MaxBodyBytes)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		t, err := s.Store.TemplateCreate(r.Context(), batchsender.TemplateCreateParams{
			ProjectID: projectID(r), Name: req.Name, Module: req.Module, Template: compactOrNil(req.Template),
		})
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		w.Header().Set("Location", "/v1/templates/"+t.Name+"/versions/"+strconv.Itoa(t.Version))
		s.encode(w, r, http.StatusCreated, t)
	})
}

func (s *server) handleTemplateList() http.Handler {
	type response struct {
		Data       []batchsender.Template `json:"data"`
		NextCursor string                 `json:"next_cursor,omitempty"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		limit, err := pageLimit(r, defaultTemplatePage, maxTemplatePage)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		cursor := r.URL.Query().Get("cursor")
		if len(cursor) > 64 {
			s.writeError(w, r, batchsender.Errorf(batchsender.EINVALID, "cursor is not one this API returned"))
			return
		}
		list, err := s.Store.TemplateList(r.Context(), batchsender.TemplateListParams{ProjectID: projectID(r), Cursor: cursor, Limit: limit + 1})
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		var out response
		if len(list) > limit {
			list = list[:limit]
			out.NextCursor = list[limit-1].Name
		}
		out.Data = list
		s.encode(w, r, http.StatusOK, out)
	})
}

func (s *server) handleTemplateGet(versioned bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		version := 0
		if versioned {
			n, err := strconv.Atoi(r.PathValue("version"))
			if err != nil || n < 1 {
				s.writeError(w, r, batchsender.Errorf(batchsender.EINVALID, "version must be a positive integer, got %q", r.PathValue("version")))
				return
			}
			version = n
		}
		t, err := s.Store.TemplateGet(r.Context(), projectID(r), r.PathValue("name"), version)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		s.encode(w, r, http.StatusOK, t)
	})
}
