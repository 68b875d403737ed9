package auth

import (
	"fmt"
	"net/http"
)

// Denial is the one-line reason of a refusal, for a person: the request
// would verb object, which needs action on path. It says whether a token
// came at all, since "this token may not" reads wrong to someone who sent
// none.
func Denial(r *http.Request, verb, object string, action Action, path string) string {
	if _, ok := FindIn(r).Secret(); !ok {
		return fmt.Sprintf("no token was given: to %s %s, a token granted %s on %s is needed", verb, object, action, path)
	}
	return fmt.Sprintf("this token may not %s %s (it needs %s on %s)", verb, object, action, path)
}
