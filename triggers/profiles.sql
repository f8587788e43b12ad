-- Publish public.profiles: every insert, update and delete reaches pgrelay subscribers.
CREATE OR REPLACE TRIGGER pgrelay_notify
    AFTER INSERT OR UPDATE OR DELETE ON public.profiles
    FOR EACH ROW EXECUTE FUNCTION pgrelay.notify_change();
