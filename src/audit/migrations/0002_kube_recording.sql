-- kube API proxy: the asciicast recording of an exec/attach stream that went
-- through the proxy (NULL for everything else).
ALTER TABLE kube_requests ADD COLUMN recording TEXT;
