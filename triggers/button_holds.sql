-- Publish public.button_holds; heartbeats (updates touching only last_heartbeat) emit nothing.
CREATE OR REPLACE TRIGGER pgrelay_notify
    AFTER INSERT OR UPDATE OR DELETE ON public.button_holds
    FOR EACH ROW EXECUTE FUNCTION pgrelay.notify_change('last_heartbeat');
