-- Len. Returns pending plus unseen messages.
return qlen()
